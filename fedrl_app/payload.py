"""Payload checks and byte accounting for the records that travel between server and clients."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, RecordDict
from flwr.common.serde import recorddict_to_proto


class PayloadError(ValueError):
    """A reply's arrays do not match what the server expects (keys, shapes, dtypes, values)."""


def recorddict_nbytes(content: RecordDict) -> int:
    """Bytes of a message's content as serialized on the wire (protobuf), not a parameter count."""
    return recorddict_to_proto(content).ByteSize()


def check_arrays(
    record: ArrayRecord,
    expected: dict[str, tuple[tuple[int, ...], str]],
    *,
    name: str = "arrays",
    max_abs: float = 1e6,
) -> dict[str, np.ndarray]:
    """Validate an untrusted ArrayRecord against expected keys, shapes and dtypes.

    Parameters
    ----------
    record : ArrayRecord
        The record received from a client.
    expected : dict[str, tuple[tuple[int, ...], str]]
        Key -> (shape, dtype string) the server sent out.
    name : str
        Record name, for the error message.
    max_abs : float
        Largest absolute value accepted (absurd norms are refused, not averaged in).

    Returns
    -------
    dict[str, np.ndarray]
        The arrays, deserialized once.

    Raises
    ------
    PayloadError
        Naming the first key whose shape, dtype or values are wrong.
    """
    keys, want = list(record.keys()), list(expected.keys())
    if keys != want:
        missing, extra = sorted(set(want) - set(keys)), sorted(set(keys) - set(want))
        raise PayloadError(f"'{name}' keys differ from the model's: missing {missing}, unexpected {extra}")
    out: dict[str, np.ndarray] = {}
    for key, (shape, dtype) in expected.items():
        array = record[key]
        if tuple(array.shape) != tuple(shape) or array.dtype != dtype:
            raise PayloadError(
                f"'{name}[{key}]' is {array.dtype}{list(array.shape)}, expected {dtype}{list(shape)}"
            )
        try:
            value = array.numpy()
        except Exception as err:
            raise PayloadError(f"'{name}[{key}]' cannot be deserialized: {err}") from None
        if not np.all(np.isfinite(value)):
            raise PayloadError(f"'{name}[{key}]' contains NaN or Inf")
        if value.size and float(np.max(np.abs(value))) > max_abs:
            raise PayloadError(f"'{name}[{key}]' has |value| up to {float(np.max(np.abs(value))):.3g} > {max_abs:g}")
        out[key] = value
    return out


def array_spec(record: ArrayRecord) -> dict[str, tuple[tuple[int, ...], str]]:
    """Key -> (shape, dtype) of a record, the expectation replies are checked against."""
    return {k: (tuple(a.shape), a.dtype) for k, a in record.items()}
