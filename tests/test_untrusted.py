"""Every decoder of client input, fed generated adversarial input: it returns or raises its own error, fast and small.

Hypothesis generates the cases (pickles with shared references, deep nesting, huge integers and
long strings; random and mutated ArrayRecords and .npy headers; experience records and gzip
bombs). The default profile runs a few hundred per decoder; `--hypothesis-profile=fuzz` (see
conftest.py) runs 10,000, as `python -m pytest tests/test_untrusted.py --hypothesis-profile=fuzz`.
"""

import gc
import gzip
import io
import pickle
import time
import tracemalloc
from dataclasses import fields

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedrl_app.protocol.codecs import CodecError, CompressionConfig, decode_update, encode_update
from fedrl_app.protocol.experience import ExperienceError, pack_experience, unpack_experience
from fedrl_app.protocol.metadata import ClientMetadata, MetadataError, decode_metadata
from fedrl_app.protocol.payload import PayloadError, check_arrays
from strategies.reply_guard import _check_metrics

LIMIT_S = 0.1
SPEC = {"w": ((4, 5), "float32"), "b": ((5,), "float32")}
NICE = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def within_limit(fn, *args, errors):
    """Call fn; it may raise only `errors`; it must finish within LIMIT_S of this thread's CPU time (the decoder's
    own cost: wall time also counts whatever else the machine runs, and failed at 244 ms on a saturated one).
    The cyclic garbage collector is off during the call: a full collection of everything the test session holds
    (~445k objects, 466 ms of CPU, measured in the fast tier) can start inside any call, is not the decoder's
    cost, and once failed a trivial metric check."""
    gc.disable()
    start = time.thread_time()
    try:
        fn(*args)
    except errors:
        pass
    finally:
        elapsed = time.thread_time() - start
        gc.enable()
    assert elapsed < LIMIT_S, f"{elapsed * 1e3:.1f} ms"


# --- metadata ----------------------------------------------------------------------------------------
def memo_bomb(depth: int, width: int) -> list:
    """A value whose rendering is width**depth long, from depth × width pickle references."""
    value: list = [1.0]
    for _ in range(depth):
        value = [value] * width
    return value


NASTY = st.one_of(
    st.integers(), st.sampled_from([10**20, 10**400, 10**5000, -(10**20000), 2**53 + 1]),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(), st.text(max_size=30),
    st.binary(max_size=30), st.builds(lambda n: "x" * n, st.integers(0, 60_000)),
    st.builds(memo_bomb, st.integers(1, 12), st.integers(2, 12)),
    st.recursive(st.floats() | st.integers() | st.text(max_size=5), lambda c: st.lists(c, max_size=4)
                 | st.dictionaries(st.text(max_size=3), c, max_size=3), max_leaves=25),
    st.lists(st.floats(), max_size=200),
)
FIELDS = [f.name for f in fields(ClientMetadata)]


@st.composite
def metadata_payloads(draw):
    meta = ClientMetadata(partition_id=1, num_examples=10, train_time_s=0.5, epoch_losses=[0.1],
                          controller_state=[0.5] * 5, episode_returns=[1.0])
    for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=4)):
        setattr(meta, name, draw(NASTY))  # as a hostile client would, skipping encode's validation
    if draw(st.booleans()):
        meta.__dict__[draw(st.text(max_size=8) | st.integers())] = draw(NASTY)
    try:
        return pickle.dumps(meta, protocol=draw(st.integers(2, pickle.HIGHEST_PROTOCOL)))
    except (RecursionError, ValueError, OverflowError):
        return b"\x80\x05."


VALID = pickle.dumps(ClientMetadata(partition_id=1, num_examples=10, train_time_s=0.5))


@st.composite
def mutated(draw, valid: bytes):
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "flip":
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif len(data) > 1:
            del data[i]
    return bytes(data)


@NICE
@given(st.one_of(metadata_payloads(), st.binary(max_size=2000), mutated(VALID)))
def test_metadata_decoder_returns_or_refuses_fast(payload):
    within_limit(decode_metadata, payload, errors=MetadataError)


# --- arrays: codec updates and dense replies ---------------------------------------------------------
DTYPES = st.sampled_from(["int8", "uint8", "uint16", "int32", "int64", "float16", "float32", "float64", "bool"])


@st.composite
def arrays_of_any_kind(draw):
    dtype = np.dtype(draw(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 6), max_size=3)))
    values = draw(st.lists(st.integers(-300, 70_000), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    with np.errstate(all="ignore"):
        array = np.asarray(values, dtype=np.float64).astype(dtype).reshape(shape)
    buf = io.BytesIO()
    np.save(buf, array)
    data = buf.getvalue()
    if draw(st.booleans()):  # lie in the header: a shape far larger than the data, or garbage
        data = data.replace(str(shape).encode(), draw(st.sampled_from([b"(2147483647,)", b"(99999, 99999)", b"(-1,)",
                                                                       b"((1,),)", b"'x'"])), 1)
    if draw(st.booleans()):
        data = draw(mutated(data))
    return Array(dtype=str(dtype), shape=shape, stype=draw(st.sampled_from(["numpy.ndarray", "torch.Tensor"])),
                 data=data)


KEYS = st.one_of(st.sampled_from(["w/idx", "w/gap", "w/val", "w/scale", "w/zero", "b/idx", "b/val", "b/scale",
                                  "b/zero", "w", "ghost/idx", "w/extra"]), st.text(max_size=10))


@NICE
@given(st.dictionaries(KEYS, arrays_of_any_kind(), max_size=6))
def test_codec_decoder_returns_or_refuses_fast(parts):
    within_limit(decode_update, ArrayRecord(parts), SPEC, errors=CodecError)


def test_a_real_compressed_update_survives_the_same_path():
    delta = {"w": np.arange(20, dtype=np.float32).reshape(4, 5), "b": np.ones(5, np.float32)}
    record, _, _ = encode_update(delta, None, delta, CompressionConfig(topk_ratio=0.5))
    assert set(decode_update(record, SPEC)) == {"w", "b"}


@NICE
@given(st.dictionaries(st.sampled_from(["w", "b", "x"]), arrays_of_any_kind(), max_size=3))
def test_dense_array_check_returns_or_refuses_fast(parts):
    within_limit(check_arrays, ArrayRecord(parts), SPEC, errors=PayloadError)


# --- experience and metrics ------------------------------------------------------------------------------
@st.composite
def experience_records(draw):
    rows = draw(st.one_of(st.integers(-5, 12_000), st.sampled_from([10**30, 2**63 - 1]), st.booleans()))
    kind = draw(st.sampled_from(["random", "gzip-random", "gzip-bomb", "honest"]))
    if kind == "random":
        gz = draw(st.binary(max_size=3000))
    elif kind == "gzip-random":
        gz = gzip.compress(draw(st.binary(max_size=3000)))
    elif kind == "gzip-bomb":
        gz = gzip.compress(b"\0" * draw(st.sampled_from([10**5, 10**6, 10**7])))
    else:
        n = draw(st.integers(0, 50))
        obs = np.zeros((n, 8), np.float32)
        record, _ = pack_experience(obs, np.zeros(n), np.zeros(n), obs, np.zeros(n))
        gz = record["gz"]
    return ConfigRecord({"rows": rows, "gz": gz})


@NICE
@given(experience_records())
def test_experience_decoder_returns_or_refuses_fast(record):
    within_limit(unpack_experience, record, 8, 4, errors=ExperienceError)


METRIC_VALUES = st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=True, allow_infinity=True),
                          st.lists(st.floats(allow_nan=True), max_size=5))


@NICE
@given(st.lists(st.dictionaries(st.sampled_from(["num-examples", "loss", "x"]), METRIC_VALUES, max_size=3),
                max_size=3))
def test_metric_check_returns_or_refuses_fast(records):
    content = RecordDict({f"metrics-{i}": MetricRecord(r) for i, r in enumerate(records)})
    within_limit(_check_metrics, content, errors=PayloadError)


# --- memory: the worst inputs above, measured ------------------------------------------------------------
@pytest.mark.parametrize("case", ["npy header claims 8 GB", "gzip bomb", "memo bomb", "huge int"])
def test_the_worst_inputs_stay_within_a_few_megabytes(case):
    good = io.BytesIO()
    np.save(good, np.zeros(4, np.float32))
    if case == "npy header claims 8 GB":
        bad = Array(dtype="float32", shape=(4, 5), stype="numpy.ndarray",
                    data=good.getvalue().replace(b"(4,)", b"(2147483647,)"))
        call, errors = (lambda: check_arrays(ArrayRecord({"w": bad, "b": bad}), SPEC)), PayloadError
    elif case == "gzip bomb":
        record = ConfigRecord({"rows": 10_000, "gz": gzip.compress(b"\0" * 50_000_000)})
        call, errors = (lambda: unpack_experience(record, 8, 4)), ExperienceError
    else:
        meta = ClientMetadata(partition_id=1, num_examples=10, train_time_s=0.5)
        meta.controller_state = memo_bomb(12, 12) if case == "memo bomb" else 10**20000
        payload = pickle.dumps(meta)
        call, errors = (lambda: decode_metadata(payload)), MetadataError
    tracemalloc.start()
    try:
        within_limit(call, errors=errors)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8e6, f"{peak / 1e6:.1f} MB"


def test_a_huge_memo_index_is_refused_before_the_unpickler_sizes_its_memo():
    # found by the fuzz profile: LONG_BINPUT 2^24 in a valid metadata pickle made the unpickler allocate 128 MB
    payload = bytearray(VALID)
    at = payload.index(b"\x94")  # the first MEMOIZE
    payload[at:at + 1] = b"r\x00\x00\x00\x01"
    tracemalloc.start()
    try:
        within_limit(decode_metadata, bytes(payload), errors=MetadataError)
        with pytest.raises(MetadataError, match="memo index 16777216"):
            decode_metadata(bytes(payload))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8e6
