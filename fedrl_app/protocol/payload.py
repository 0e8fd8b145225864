"""Payload checks: an untrusted ArrayRecord must match the spec of what the server sent; one magnitude policy
(`MAX_ABS`, and optional norm bounding) for every update path: dense models, compressed updates, policy
gradients, Q-networks and shared experience."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord

from fedrl_app.protocol import keys
from fedrl_app.protocol.records import ModelSpec
from fedrl_app.protocol.untrusted import UntrustedArrayError, load_array

MAX_ABS = 1e6  # the largest |value| any update, model, gradient or experience entry may hold


class PayloadError(ValueError):
    """A reply's arrays do not match what the server expects (keys, shapes, dtypes, values)."""


def check_arrays(
    record: ArrayRecord,
    expected: ModelSpec,
    *,
    name: str = keys.ARRAYS,
    max_abs: float = MAX_ABS,
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
            value = load_array(array, max_bytes=int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
        except UntrustedArrayError as err:
            raise PayloadError(f"'{name}[{key}]' cannot be deserialized: {err}") from None
        if value.shape != tuple(shape) or value.dtype != dtype:
            raise PayloadError(f"'{name}[{key}]' holds {value.dtype}{list(value.shape)}, declared "
                               f"{dtype}{list(shape)}")
        if not np.all(np.isfinite(value)):
            raise PayloadError(f"'{name}[{key}]' contains NaN or Inf")
        if value.size and float(np.max(np.abs(value))) > max_abs:
            raise PayloadError(f"'{name}[{key}]' has |value| up to {float(np.max(np.abs(value))):.3g} > {max_abs:g}")
        out[key] = value
    return out


def check_magnitude(update: dict[str, np.ndarray], *, name: str, max_abs: float = MAX_ABS) -> None:
    """The magnitude policy on a decoded update: every value finite and within ±max_abs (PayloadError naming it)."""
    for key, value in update.items():
        if not np.all(np.isfinite(value)):
            raise PayloadError(f"'{name}[{key}]' contains NaN or Inf")
        if value.size and float(np.max(np.abs(value))) > max_abs:
            raise PayloadError(f"'{name}[{key}]' has |value| up to {float(np.max(np.abs(value))):.3g} > {max_abs:g}")


def bound_norm(update: dict[str, np.ndarray], max_norm: float) -> tuple[dict[str, np.ndarray], float]:
    """Norm bounding (Sun et al. 2019, "Can you really backdoor federated learning?"): the update scaled down to
    ‖u‖ ≤ max_norm (0: no bound), and its norm before. Dtypes are kept."""
    norm = float(np.sqrt(sum(float(np.sum(np.square(v.astype(np.float64)))) for v in update.values())))
    if max_norm <= 0 or norm <= max_norm:
        return update, norm
    factor = max_norm / norm
    return {k: (v.astype(np.float64) * factor).astype(v.dtype) for k, v in update.items()}, norm
