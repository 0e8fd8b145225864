"""Update codec: exact dense round trip, top-k, int8 bounds, error feedback, pruning, hostile payloads."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedrl_app.protocol.codecs import (
    CodecError,
    CompressionConfig,
    decode_update,
    dequantize_int8,
    encode_update,
    layer_indices,
    quantize_int8,
)


def _spec(arrays):
    return {name: (a.shape, str(a.dtype)) for name, a in arrays.items()}


def _random(rng, shapes):
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def _tamper(record, **changes):
    """Copy of ``record`` with arrays replaced (key -> array) or removed (key -> None)."""
    arrays = {key: record[key].numpy() for key in record.keys()}
    for key, arr in changes.items():
        key = key.replace("__", "/")  # keyword names cannot hold "/"
        if arr is None:
            arrays.pop(key)
        else:
            arrays[key] = arr
    return ArrayRecord({key: Array(np.ascontiguousarray(a)) for key, a in arrays.items()})


def test_dense_unquantized_round_trip_is_exact():
    rng = np.random.default_rng(0)
    delta = _random(rng, {"conv.weight": (3, 2, 5), "conv.bias": (3,), "fc.weight": (7, 11)})
    config = CompressionConfig(topk_ratio=1.0, quantize=False)
    record, residual, stats = encode_update(delta, None, delta, config)
    decoded = decode_update(record, _spec(delta))
    assert list(decoded) == list(delta)
    for name in delta:
        assert decoded[name].dtype == np.float32
        assert np.array_equal(decoded[name], delta[name])
        assert not residual[name].any()
    assert stats.entries_sent == stats.entries_total == 30 + 3 + 77


def test_topk_keeps_exactly_the_largest_magnitudes():
    rng = np.random.default_rng(1)
    magnitudes = rng.permutation(np.arange(1, 21, dtype=np.float32))
    signs = np.where(rng.random(20) < 0.5, -1.0, 1.0).astype(np.float32)
    x = (magnitudes * signs).reshape(4, 5)
    # ceil(0.22 * 20) = ceil(4.4) = 5 entries: magnitudes 16..20.
    config = CompressionConfig(topk_ratio=0.22, quantize=False)
    record, residual, stats = encode_update({"w": x}, None, {"w": x}, config)

    expected_idx = np.flatnonzero(magnitudes >= 16)
    assert np.array_equal(record["w/gap"].numpy(), np.diff(expected_idx, prepend=0))  # 20 entries: gaps fit uint16
    assert np.array_equal(layer_indices(record, "w"), expected_idx)
    assert stats.entries_sent == 5
    kept = np.abs(x) >= 16
    decoded = decode_update(record, _spec({"w": x}))["w"]
    assert np.array_equal(decoded, np.where(kept, x, 0))
    assert np.array_equal(residual["w"], np.where(kept, 0, x))


def test_quantization_error_is_at_most_half_a_step():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(10_000) * 3 + 0.5).astype(np.float32)
    q, scale, zero = quantize_int8(x)
    assert q.dtype == np.int8
    assert q.min() == -128 and q.max() == 127  # the full range is used
    assert scale == pytest.approx((x.max() - x.min()) / 255, rel=1e-6)
    err = np.abs(dequantize_int8(q, scale, zero) - x)
    assert err.max() <= scale / 2 + 1e-6


@pytest.mark.parametrize("value", [0.0, 0.123456789, -7.25, 3.0e-8])
def test_constant_tensor_round_trips_exactly(value):
    x = np.full((3, 4), value, dtype=np.float32)
    q, scale, zero = quantize_int8(x)
    assert np.array_equal(dequantize_int8(q, scale, zero), x)

    record, residual, _ = encode_update({"c": x}, None, {"c": x}, CompressionConfig(topk_ratio=1.0))
    assert record["c/val"].dtype == "int8"
    assert np.array_equal(decode_update(record, _spec({"c": x}))["c"], x)
    assert not residual["c"].any()


def test_error_feedback_recovers_dropped_mass():
    rng = np.random.default_rng(3)
    # Magnitudes bounded away from zero, so every entry's residual keeps growing until it is sent.
    delta = {
        "a": (rng.uniform(0.5, 1.5, (10, 20)) * rng.choice([-1, 1], (10, 20))).astype(np.float32),
        "b": rng.uniform(0.5, 1.5, 50).astype(np.float32),
    }
    spec = _spec(delta)
    config = CompressionConfig(topk_ratio=0.05, quantize=True)
    rounds = 60
    residual = None
    total = {name: np.zeros(a.shape, dtype=np.float64) for name, a in delta.items()}
    ever_sent = {name: np.zeros(a.size, dtype=bool) for name, a in delta.items()}
    for _ in range(rounds):
        record, residual, stats = encode_update(delta, residual, delta, config)
        assert stats.entries_sent == 10 + 3  # ceil(0.05 * 200), ceil(0.05 * 50)
        for name, d in decode_update(record, spec).items():
            total[name] += d
            ever_sent[name][layer_indices(record, name)] = True
    for name, d in delta.items():
        np.testing.assert_allclose(total[name] + residual[name], rounds * d.astype(np.float64), rtol=1e-5, atol=1e-4)
        assert ever_sent[name].all(), f"{name}: {np.sum(~ever_sent[name])} entries never sent"


def test_pruned_layer_is_not_sent_and_stays_in_residual():
    rng = np.random.default_rng(4)
    weights = _random(rng, {"big": (8, 8), "tiny": (16,)})
    delta = {"big": weights["big"] * 0.1, "tiny": weights["tiny"] * 1e-6}
    old_residual = {"big": np.zeros((8, 8), np.float32), "tiny": weights["tiny"] * 2e-6}
    config = CompressionConfig(topk_ratio=1.0, quantize=False, prune_threshold=1e-3)
    record, residual, stats = encode_update(delta, old_residual, weights, config)

    assert not any(key.startswith("tiny/") for key in record.keys())
    assert "big/gap" in record.keys()
    assert (stats.layers_sent, stats.layers_pruned) == (1, 1)
    decoded = decode_update(record, _spec(weights))
    assert not decoded["tiny"].any()
    assert np.array_equal(decoded["big"], delta["big"])
    assert np.array_equal(residual["tiny"], delta["tiny"] + old_residual["tiny"])


def test_payload_size_for_one_percent_int8():
    rng = np.random.default_rng(5)
    delta = {"w": rng.standard_normal(100_000).astype(np.float32)}
    for gaps, entry_bytes in ((True, 2 + 1), (False, 4 + 1)):  # uint16 gap or int32 index, plus an int8 value
        config = CompressionConfig(topk_ratio=0.01, quantize=True, gap_indices=gaps)
        record, _, stats = encode_update(delta, None, delta, config)
        nbytes = sum(record[key].numpy().nbytes for key in record.keys())
        assert stats.entries_sent == 1000
        assert nbytes == stats.payload_nbytes == 1000 * entry_bytes + 8  # + float32 scale and zero point


def test_gap_coding_round_trips_and_falls_back_to_int32_for_a_long_gap():
    x = np.zeros(200_000, np.float32)
    x[[3, 70_000, 70_001, 199_999]] = [1.0, -2.0, 3.0, 4.0]
    near = np.zeros(1000, np.float32)
    near[[0, 5, 999]] = [1.0, 2.0, 3.0]
    delta = {"far": x, "near": near}
    config = CompressionConfig(topk_ratio=4 / 200_000, quantize=False)  # near keeps ceil(0.02) = 1 entry
    record, _, _ = encode_update(delta, None, delta, config)
    assert record["far/idx"].dtype == "int32"  # 70_000 − 3 > 65_535: int32 indices for this layer only
    assert record["near/gap"].dtype == "uint16" and record["near/gap"].numpy().tolist() == [999]
    decoded = decode_update(record, _spec(delta))
    assert np.array_equal(decoded["far"], x)
    assert np.array_equal(np.flatnonzero(decoded["near"]), [999])


@pytest.fixture
def payloads():
    """A valid quantized and a valid float payload for one (4, 5) layer, plus the spec."""
    rng = np.random.default_rng(6)
    delta = {"w": rng.standard_normal((4, 5)).astype(np.float32)}
    # int32 indices here; the gap-coded variant has its own cases below
    quantized, _, _ = encode_update(delta, None, delta, CompressionConfig(topk_ratio=0.2, gap_indices=False))
    plain, _, _ = encode_update(delta, None, delta, CompressionConfig(topk_ratio=0.2, quantize=False,
                                                                      gap_indices=False))
    return quantized, plain, _spec(delta)


def test_untampered_payloads_decode(payloads):
    quantized, plain, spec = payloads
    for record in (quantized, plain):
        assert np.count_nonzero(decode_update(record, spec)["w"]) == 4


def _idx(record):
    return record["w/idx"].numpy().copy()


def _set(arr, pos, value):
    arr[pos] = value
    return arr


BAD_QUANTIZED = {
    "index out of range": (lambda r: {"w__idx": _set(_idx(r), -1, 20)}, r"w/idx: index out of range"),
    "negative index": (lambda r: {"w__idx": _set(_idx(r), 0, -1)}, r"w/idx: index out of range"),
    "duplicate index": (lambda r: {"w__idx": _set(_idx(r), 1, _idx(r)[0])}, r"w/idx: duplicate index"),
    "int64 indices": (lambda r: {"w__idx": _idx(r).astype(np.int64)}, r"w/idx: expected 1-D int32, got int64"),
    "float indices": (lambda r: {"w__idx": _idx(r).astype(np.float32)}, r"w/idx: expected 1-D int32, got float32"),
    "lengths differ": (lambda r: {"w__val": r["w/val"].numpy()[:-1]}, r"w: 4 indices but 3 values"),
    "more than numel": (  # int8 values and uint16 gaps fit the byte bound: the entry count catches it
        lambda r: {"w__idx": None, "w__gap": np.ones(21, dtype=np.uint16), "w__val": np.zeros(21, np.int8)},
        r"w: 21 entries but the layer has only 20",
    ),
    "int32 indices over the byte bound": (  # 21 × 4 bytes > the dense layer's 20 × 4: refused before loading
        lambda r: {"w__idx": np.arange(21, dtype=np.int32), "w__val": np.zeros(21, np.int8)},
        r"w/idx: cannot load array \(the header claims 84 bytes, over the 80 this array may have\)",
    ),
    "zero scale": (lambda r: {"w__scale": np.zeros(1, np.float32)}, r"w/scale: must be > 0"),
    "negative scale": (lambda r: {"w__scale": np.full(1, -0.5, np.float32)}, r"w/scale: must be > 0"),
    "nan scale": (lambda r: {"w__scale": np.full(1, np.nan, np.float32)}, r"w/scale: non-finite"),
    "scale shape": (lambda r: {"w__scale": np.ones(2, np.float32)}, r"w/scale: expected float32 of shape \(1,\)"),
    "missing zero": (lambda r: {"w__zero": None}, r"w/zero: missing"),
    "overflowing scale": (lambda r: {"w__scale": np.full(1, 3e38, np.float32)}, r"w/val: non-finite"),
    "unknown layer": (lambda r: {"ghost__idx": _idx(r)}, r"ghost/idx: unknown layer name 'ghost'"),
    "unknown suffix": (lambda r: {"w__extra": _idx(r)}, r"w/extra: unknown key suffix"),
    "no suffix": (lambda r: {"w": _idx(r)}, r"w: unknown key suffix"),
}


@pytest.mark.parametrize("case", list(BAD_QUANTIZED))
def test_decoder_refuses_bad_quantized_payload(payloads, case):
    quantized, _, spec = payloads
    change, message = BAD_QUANTIZED[case]
    with pytest.raises(CodecError, match=message):
        decode_update(_tamper(quantized, **change(quantized)), spec)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: {"w__val": _set(r["w/val"].numpy().copy(), 2, np.nan)}, r"w/val: non-finite"),
        (lambda r: {"w__val": _set(r["w/val"].numpy().copy(), 0, np.inf)}, r"w/val: non-finite"),
        (lambda r: {"w__val": r["w/val"].numpy().astype(np.float64)}, r"w/val: expected int8 or float32, got float64"),
        (lambda r: {"w__scale": np.ones(1, np.float32)}, r"w/scale: unexpected for float32 values"),
        (lambda r: {"w__idx": None}, r"w/idx: missing \(neither idx nor gap sent\)"),
    ],
    ids=["nan value", "inf value", "float64 values", "scale with float values", "missing idx"],
)
def test_decoder_refuses_bad_float_payload(payloads, change, message):
    _, plain, spec = payloads
    with pytest.raises(CodecError, match=message):
        decode_update(_tamper(plain, **change(plain)), spec)


def _gapped():
    rng = np.random.default_rng(7)
    delta = {"w": rng.standard_normal((4, 5)).astype(np.float32)}
    record, _, _ = encode_update(delta, None, delta, CompressionConfig(topk_ratio=0.2))
    return record, _spec(delta)


BAD_GAPS = {
    "zero gap after the first": (lambda g: _set(g, 2, 0), r"w/gap: duplicate index"),
    "sum past the layer": (lambda g: _set(g, 3, 60_000), r"w/gap: index out of range \[0, 20\)"),
    "int16 gaps": (lambda g: g.astype(np.int16), r"w/gap: expected 1-D uint16, got int16"),
    "2-D gaps": (lambda g: g.reshape(2, 2), r"w/gap: expected 1-D uint16, got uint16 with shape \(2, 2\)"),
}


@pytest.mark.parametrize("case", list(BAD_GAPS))
def test_decoder_refuses_bad_gap_payload(case):
    record, spec = _gapped()
    change, message = BAD_GAPS[case]
    assert decode_update(record, spec)["w"].any()  # untampered, it decodes
    with pytest.raises(CodecError, match=message):
        decode_update(_tamper(record, w__gap=change(record["w/gap"].numpy().copy())), spec)


def test_decoder_refuses_both_index_forms():
    record, spec = _gapped()
    idx = layer_indices(record, "w").astype(np.int32)
    with pytest.raises(CodecError, match=r"w: both idx and gap sent"):
        decode_update(_tamper(record, w__idx=idx), spec)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"topk_ratio": 0.0}, "topk_ratio"),
        ({"topk_ratio": 1.5}, "topk_ratio"),
        ({"topk_ratio": float("nan")}, "topk_ratio"),
        ({"prune_threshold": -0.1}, "prune_threshold"),
        ({"quantize": 1}, "quantize"),
        ({"gap_indices": "yes"}, "gap_indices"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(CodecError, match=field):
        CompressionConfig(**kwargs).validate()
    with pytest.raises(CodecError, match=field):
        encode_update({"w": np.ones(3, np.float32)}, None, {}, CompressionConfig(**kwargs))
