"""Small array helpers shared by the strategies."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord


def mean_arrays(arrays: list[dict[str, np.ndarray]], weights: list[float] | None = None) -> dict[str, np.ndarray]:
    """Weighted mean of dicts of arrays (uniform if `weights` is None), in float64, cast back."""
    w = np.full(len(arrays), 1.0 / len(arrays)) if weights is None else np.asarray(weights, float) / np.sum(weights)
    return {k: sum(wi * a[k].astype(np.float64) for wi, a in zip(w, arrays)).astype(arrays[0][k].dtype) for k in arrays[0]}


def squared_norm(arrays: dict[str, np.ndarray]) -> float:
    """‖v‖² of a dict of arrays seen as one vector (float64)."""
    return float(sum(np.sum(np.square(a.astype(np.float64))) for a in arrays.values()))


def distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """‖a − b‖₂ over the keys of `b`, in float64 (e.g. the norm of an update, model returned − model sent)."""
    return float(np.sqrt(squared_norm({k: a[k].astype(np.float64) - v.astype(np.float64) for k, v in b.items()})))


def to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """ArrayRecord -> dict of numpy arrays."""
    return {k: v.numpy() for k, v in record.items()}


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """Dict of numpy arrays -> ArrayRecord."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def staleness_weight(tau: int, exponent: float) -> float:
    """s(τ) = (1 + τ)^(−a): the weight of an update computed on a model τ versions old."""
    if tau < 0:
        raise ValueError(f"staleness must be >= 0, got {tau}")
    return float((1.0 + tau) ** (-exponent))
