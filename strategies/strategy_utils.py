"""Small helpers shared by the strategies: array arithmetic, staleness weights, delegation to a wrapped strategy."""

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


class DelegatesToWrapped:
    """For a strategy that wraps another: the hooks' per-round logs, the resume offset and the checkpoint
    state are the wrapped strategy's. Subclasses name the wrapped one in `_wrapped`."""

    def _wrapped(self):
        raise NotImplementedError

    @property
    def rounds(self):
        """Per-round logs (reports, drops, extra series) for the hooks."""
        return self._wrapped().rounds

    @property
    def round_offset(self) -> int:
        return self._wrapped().round_offset

    @round_offset.setter
    def round_offset(self, value: int) -> None:
        self._wrapped().round_offset = value

    def state_dict(self) -> dict:
        getter = getattr(self._wrapped(), "state_dict", None)
        return dict(getter()) if getter else {}

    def load_state_dict(self, state: dict) -> None:
        if hasattr(self._wrapped(), "load_state_dict"):
            self._wrapped().load_state_dict(state)
