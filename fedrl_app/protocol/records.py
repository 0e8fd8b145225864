"""Record helpers both sides use: ArrayRecord <-> numpy dicts, array specs, and the bytes a message costs."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.common.serde import recorddict_to_proto

ModelSpec = dict[str, tuple[tuple[int, ...], str]]  # layer name -> (shape, dtype string)


def to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """ArrayRecord -> dict of numpy arrays (in the record's order)."""
    return {k: v.numpy() for k, v in record.items()}


def to_record(arrays: dict[str, np.ndarray], dtype: np.dtype | type | None = None) -> ArrayRecord:
    """Dict of numpy arrays -> ArrayRecord, contiguous (and cast to `dtype` if given)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v, dtype=dtype)) for k, v in arrays.items()})


def array_spec(record: ArrayRecord) -> ModelSpec:
    """Key -> (shape, dtype) of a record, the expectation replies are checked against."""
    return {k: (tuple(a.shape), a.dtype) for k, a in record.items()}


def recorddict_nbytes(content: RecordDict) -> int:
    """Bytes of a message's content as serialized on the wire (protobuf), not a parameter count."""
    return recorddict_to_proto(content).ByteSize()
