"""Compressed model-update codec: top-k sparsification, int8 quantization, gap-coded indices, pruning, error feedback.

Payload layout, per layer `name` that is sent: the kept positions as `name/gap` (uint16 gaps between
sorted flat indices, the first gap counted from 0) or, when a gap does not fit in 16 bits or gap
coding is off, `name/idx` (int32 flat indices); the values as `name/val` (int8, with float32
`name/scale` and `name/zero`) or float32. With int8 values a kept entry costs 3 bytes instead of 5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord

from fedrl_app.protocol.records import ModelSpec
from fedrl_app.protocol.untrusted import UntrustedArrayError, load_array


COMPRESSED_BYTES_PER_ENTRY = 3 / 4  # top-k + int8 values + uint16 gaps: 3 bytes a kept entry, against 4 dense
RESIDUAL_ON_DENSE = ("flush", "drop")  # what a dense update does with the error-feedback residual (client/sync.py)


class CodecError(ValueError):
    """An update cannot be encoded, or a received payload is malformed."""


_SUFFIXES = ("idx", "gap", "val", "scale", "zero")
GAP_LIMIT = np.iinfo(np.uint16).max  # largest gap a uint16 holds


@dataclass(frozen=True)
class CompressionConfig:
    """How a client compresses its update.

    Attributes
    ----------
    topk_ratio : float
        Fraction of entries kept per tensor, in (0, 1]; 1.0 sends every entry.
    quantize : bool
        Quantize the kept values to int8 (per-tensor affine).
    prune_threshold : float
        Layers with ``||u_l|| / (||w_l|| + 1e-12)`` below this are not sent (0 disables pruning).
    gap_indices : bool
        Send the kept positions as uint16 gaps when every gap fits (else int32 indices).
    """

    topk_ratio: float = 0.01
    quantize: bool = True
    prune_threshold: float = 0.0
    gap_indices: bool = True

    def validate(self) -> None:
        """Raise CodecError naming the first field that is out of range."""
        if not (math.isfinite(self.topk_ratio) and 0.0 < self.topk_ratio <= 1.0):
            raise CodecError(f"topk_ratio must be in (0, 1], got {self.topk_ratio!r}")
        if not isinstance(self.quantize, (bool, np.bool_)):
            raise CodecError(f"quantize must be a bool, got {self.quantize!r}")
        if not (math.isfinite(self.prune_threshold) and self.prune_threshold >= 0.0):
            raise CodecError(f"prune_threshold must be finite and >= 0, got {self.prune_threshold!r}")
        if not isinstance(self.gap_indices, (bool, np.bool_)):
            raise CodecError(f"gap_indices must be a bool, got {self.gap_indices!r}")


@dataclass
class EncodeStats:
    """What one call to `encode_update` sent.

    Attributes
    ----------
    layers_sent, layers_pruned : int
        Layers present in / left out of the payload.
    entries_sent, entries_total : int
        Values sent and values in the whole update.
    payload_nbytes : int
        Summed ``nbytes`` of the payload arrays (raw data, no serialization overhead).
    """

    layers_sent: int
    layers_pruned: int
    entries_sent: int
    entries_total: int
    payload_nbytes: int


def quantize_int8(x: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Per-tensor affine quantization of float values to int8.

    ``zero_point`` is the real value that ``q = -128`` stands for (the tensor minimum), so
    ``x ~= zero_point + scale * (q + 128)``. Storing the minimum itself (rather than the
    conventional ``-min / scale`` offset) keeps a constant tensor exact.

    Parameters
    ----------
    x : np.ndarray
        Finite, non-empty float values.

    Returns
    -------
    tuple[np.ndarray, float, float]
        ``(q, scale, zero_point)``; ``q`` is int8 with the shape of ``x``. ``scale`` and
        ``zero_point`` are float32-representable, as they travel as float32.
    """
    x64 = np.asarray(x, dtype=np.float64)
    lo, hi = float(x64.min()), float(x64.max())
    # Round parameters to float32 *before* quantizing, so the client computes its residual
    # with exactly the numbers the server will decode with.
    zero_point = float(np.float32(lo))
    scale = float(np.float32((hi - lo) / 255.0))
    if scale == 0.0:
        # Constant tensor (or a spread below float32 resolution): every q is -128 -> zero_point.
        scale = 1.0
    steps = np.clip(np.rint((x64 - zero_point) / scale), 0, 255)
    return (steps - 128).astype(np.int8), scale, zero_point


def dequantize_int8(q: np.ndarray, scale: float, zero_point: float) -> np.ndarray:
    """Inverse of `quantize_int8`: ``zero_point + scale * (q + 128)`` as float32."""
    # Overflow (a hostile scale) yields inf, which the decoder reports; no warning needed.
    with np.errstate(over="ignore"):
        return (zero_point + scale * (q.astype(np.float64) + 128.0)).astype(np.float32)


def _topk_count(ratio: float, numel: int) -> int:
    # The small epsilon stops float noise (0.07 * 100 = 7.000000000000001) from adding an entry.
    return min(numel, max(1, math.ceil(ratio * numel - 1e-9)))


def encode_update(
    delta: dict[str, np.ndarray],
    residual: dict[str, np.ndarray] | None,
    weights: dict[str, np.ndarray],
    config: CompressionConfig,
) -> tuple[ArrayRecord, dict[str, np.ndarray], EncodeStats]:
    """Compress ``u = delta + residual`` with error feedback.

    Parameters
    ----------
    delta : dict[str, np.ndarray]
        This round's update (local - global), name -> array, in model order.
    residual : dict[str, np.ndarray] or None
        What earlier rounds did not send; None means zeros.
    weights : dict[str, np.ndarray]
        Global weights, the reference for relative-norm pruning (only read when pruning).
    config : CompressionConfig
        Compression settings.

    Returns
    -------
    tuple[ArrayRecord, dict[str, np.ndarray], EncodeStats]
        The payload, the new residual ``u - decoded(payload)`` (float32, shapes of ``delta``)
        and statistics.

    Raises
    ------
    CodecError
        If the config is invalid, the residual or weights do not match ``delta``, or ``u`` is
        not finite.
    """
    config.validate()
    if residual is not None and set(residual) != set(delta):
        raise CodecError(f"residual keys {sorted(residual)} do not match delta keys {sorted(delta)}")

    arrays: dict[str, Array] = {}
    new_residual: dict[str, np.ndarray] = {}
    stats = EncodeStats(0, 0, 0, 0, 0)
    for name, d in delta.items():
        u = np.asarray(d, dtype=np.float32)
        if residual is not None:
            if residual[name].shape != u.shape:
                raise CodecError(f"{name}: residual shape {residual[name].shape} != delta shape {u.shape}")
            u = u + residual[name].astype(np.float32)
        if not np.all(np.isfinite(u)):
            raise CodecError(f"{name}: update contains non-finite values")
        stats.entries_total += u.size

        if u.size == 0 or _pruned(name, u, weights, config.prune_threshold):
            # Nothing is sent, so the whole u waits in the residual for a later round.
            new_residual[name] = u.copy()
            stats.layers_pruned += 1
            continue

        flat = u.ravel()
        k = _topk_count(config.topk_ratio, flat.size)
        if k == flat.size:
            idx = np.arange(flat.size, dtype=np.int32)
        else:
            idx = np.sort(np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :]).astype(np.int32)
        kept = flat[idx]

        layer = encode_indices(name, idx, config.gap_indices)
        if config.quantize:
            q, scale, zero = quantize_int8(kept)
            sent = dequantize_int8(q, scale, zero)
            layer[f"{name}/val"] = q
            layer[f"{name}/scale"] = np.array([scale], dtype=np.float32)
            layer[f"{name}/zero"] = np.array([zero], dtype=np.float32)
        else:
            sent = kept
            layer[f"{name}/val"] = kept

        # Subtract what the server will actually see, so quantization error is fed back too.
        rest = flat.copy()
        rest[idx] -= sent
        new_residual[name] = rest.reshape(u.shape)

        for key, arr in layer.items():
            arrays[key] = Array(np.ascontiguousarray(arr))
            stats.payload_nbytes += arr.nbytes
        stats.layers_sent += 1
        stats.entries_sent += k
    return ArrayRecord(arrays), new_residual, stats


def encode_indices(name: str, idx: np.ndarray, gaps: bool) -> dict[str, np.ndarray]:
    """Sorted flat indices as `name/gap` (uint16 differences, the first from 0) when all fit, else `name/idx` (int32)."""
    if gaps and idx.size:
        diffs = np.diff(idx, prepend=0)
        if diffs.max() <= GAP_LIMIT:
            return {f"{name}/gap": diffs.astype(np.uint16)}
    return {f"{name}/idx": idx.astype(np.int32)}


def layer_indices(record: ArrayRecord, name: str) -> np.ndarray:
    """The flat indices a payload sends for `name` (gap- or int32-coded), as int64; not validated."""
    if f"{name}/gap" in record.keys():
        return np.cumsum(record[f"{name}/gap"].numpy().astype(np.int64))
    return record[f"{name}/idx"].numpy().astype(np.int64)


def _pruned(name: str, u: np.ndarray, weights: dict[str, np.ndarray], threshold: float) -> bool:
    if threshold <= 0.0:
        return False
    if name not in weights:
        raise CodecError(f"{name}: no weights given for relative-norm pruning")
    # float64 norms: float32 sums of squares overflow for large layers.
    w_norm = float(np.linalg.norm(np.asarray(weights[name], dtype=np.float64)))
    u_norm = float(np.linalg.norm(u.astype(np.float64)))
    return u_norm / (w_norm + 1e-12) < threshold


def decode_update(record: ArrayRecord, spec: ModelSpec) -> dict[str, np.ndarray]:
    """Validate an untrusted payload and expand it to a dense update.

    Parameters
    ----------
    record : ArrayRecord
        Payload from a client, laid out as written by `encode_update`.
    spec : ModelSpec
        Name -> (shape, dtype) of the global model; fixes which layers and sizes are valid.

    Returns
    -------
    dict[str, np.ndarray]
        Float32 update for every layer in ``spec``, in spec order; zeros where a layer is
        absent (pruned).

    Raises
    ------
    CodecError
        On unknown layers or suffixes, missing or unexpected parts, wrong dtypes or shapes,
        out-of-range, duplicate or unsorted indices, length mismatches, non-finite values or
        a scale that is not a positive finite number.
    """
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key in record.keys():
        name, sep, suffix = key.rpartition("/")
        if not sep or suffix not in _SUFFIXES:
            raise CodecError(f"{key}: unknown key suffix (expected one of {_SUFFIXES})")
        if name not in spec:
            raise CodecError(f"{key}: unknown layer name {name!r}")
        try:
            # Validate the loaded array, not the declared dtype/shape, which a client controls separately;
            # no part of a layer's payload may be larger than the dense layer in float32.
            numel = int(np.prod(spec[name][0], dtype=np.int64))
            parts.setdefault(name, {})[suffix] = load_array(record[key], max_bytes=4 * max(numel, 1))
        except UntrustedArrayError as exc:
            raise CodecError(f"{key}: cannot load array ({exc})") from None

    out: dict[str, np.ndarray] = {}
    for name, (shape, _dtype) in spec.items():
        dense = np.zeros(int(np.prod(shape, dtype=np.int64)), dtype=np.float32)
        if name in parts:
            idx, values = _decode_layer(name, parts[name], dense.size)
            dense[idx] = values
        out[name] = dense.reshape(shape)
    return out


def _decode_layer(name: str, part: dict[str, np.ndarray], numel: int) -> tuple[np.ndarray, np.ndarray]:
    """Check one layer's arrays and return (indices, float32 values)."""
    if "idx" in part and "gap" in part:
        raise CodecError(f"{name}: both idx and gap sent (expected one)")
    if "idx" not in part and "gap" not in part:
        raise CodecError(f"{name}/idx: missing (neither idx nor gap sent)")
    if "val" not in part:
        raise CodecError(f"{name}/val: missing")
    idx_key = "gap" if "gap" in part else "idx"
    idx, val = part[idx_key], part["val"]
    expected = np.uint16 if idx_key == "gap" else np.int32
    if idx.dtype != expected or idx.ndim != 1:
        raise CodecError(f"{name}/{idx_key}: expected 1-D {np.dtype(expected).name}, got {idx.dtype} with shape "
                         f"{idx.shape}")
    if idx_key == "gap":  # int64 running sum: no overflow, and a zero gap after the first is a duplicate
        idx = np.cumsum(idx.astype(np.int64))
    if val.ndim != 1:
        raise CodecError(f"{name}/val: expected 1-D, got shape {val.shape}")
    if idx.size != val.size:
        raise CodecError(f"{name}: {idx.size} indices but {val.size} values")
    if idx.size > numel:
        raise CodecError(f"{name}: {idx.size} entries but the layer has only {numel}")
    if idx.size and (idx.min() < 0 or idx.max() >= numel):
        raise CodecError(f"{name}/{idx_key}: index out of range [0, {numel})")
    steps = np.diff(idx)
    if np.any(steps <= 0):  # one pass: strictly increasing means sorted and free of duplicates
        kind = "duplicate index" if np.any(steps == 0) else "indices not sorted ascending"
        raise CodecError(f"{name}/{idx_key}: {kind}")

    if val.dtype == np.float32:
        for extra in ("scale", "zero"):
            if extra in part:
                raise CodecError(f"{name}/{extra}: unexpected for float32 values")
        values = val
    elif val.dtype == np.int8:
        scale = _scalar(name, "scale", part)
        zero = _scalar(name, "zero", part)
        if not scale > 0.0:
            raise CodecError(f"{name}/scale: must be > 0, got {scale}")
        values = dequantize_int8(val, scale, zero)
    else:
        raise CodecError(f"{name}/val: expected int8 or float32, got {val.dtype}")
    # Also catches finite scale/zero whose dequantized values overflow float32.
    if not np.all(np.isfinite(values)):
        raise CodecError(f"{name}/val: non-finite value")
    return idx, values


def _scalar(name: str, suffix: str, part: dict[str, np.ndarray]) -> float:
    key = f"{name}/{suffix}"
    if suffix not in part:
        raise CodecError(f"{key}: missing (required for int8 values)")
    arr = part[suffix]
    if arr.dtype != np.float32 or arr.shape != (1,):
        raise CodecError(f"{key}: expected float32 of shape (1,), got {arr.dtype} with shape {arr.shape}")
    value = float(arr[0])
    if not math.isfinite(value):
        raise CodecError(f"{key}: non-finite value {value}")
    return value
