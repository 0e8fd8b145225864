"""The metadata contract: round trip, and the allowlist decoder refusing hostile payloads."""

import os
import pickle

import pytest

from fedrl_app.protocol import keys
from fedrl_app.protocol.metadata import (
    MAX_METADATA_BYTES,
    ClientMetadata,
    MetadataError,
    decode_metadata,
    encode_metadata,
)


def _meta(**kw) -> ClientMetadata:
    base = dict(partition_id=3, num_examples=120, train_time_s=1.5, epoch_losses=[0.9, 0.4], converged=False,
                bytes_sent=4096, sync_decision="full", staleness=2, gradient_divergence=0.25, compression_rate=0.1)
    base.update(kw)
    return ClientMetadata(**base)


def test_round_trip_is_exact():
    meta = _meta()
    assert decode_metadata(encode_metadata(meta)[keys.METADATA_PAYLOAD]) == meta


class _RunsCode:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_payload_naming_os_system_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_RunsCode(marker))
    with pytest.raises(MetadataError, match=r"global '(posix|os)\.system'.*not in the allowlist"):
        decode_metadata(payload)
    assert not marker.exists()


def test_payload_naming_a_non_metadata_class_is_refused():
    with pytest.raises(MetadataError, match="collections.OrderedDict"):
        decode_metadata(pickle.dumps(__import__("collections").OrderedDict(a=1)))


def test_builtin_container_that_is_not_metadata_is_refused():
    with pytest.raises(MetadataError, match="decodes to dict, not a metadata class"):
        decode_metadata(pickle.dumps({"partition_id": 1}))


def test_oversized_payload_is_refused_before_unpickling():
    with pytest.raises(MetadataError, match=f"over the {MAX_METADATA_BYTES}-byte limit"):
        decode_metadata(b"\x80" * (MAX_METADATA_BYTES + 1))


def test_truncated_payload_is_refused():
    payload = encode_metadata(_meta())[keys.METADATA_PAYLOAD]
    with pytest.raises(MetadataError, match="not a valid pickle"):
        decode_metadata(payload[: len(payload) // 2])


@pytest.mark.parametrize(
    ("field", "value"),
    [("train_time_s", float("nan")), ("num_examples", -1), ("epoch_losses", ["x"]), ("staleness", 1.5),
     ("converged", "yes"), ("episode_lengths", [3, -1]), ("episode_returns", [1.0, float("inf")]),
     ("controller_state", [0.0] * 65), ("env_steps", True), ("gradient_norm", -1.0), ("gradient_uploaded", 1),
     ("gradient_change", float("nan")), ("lazy_bound", -0.5), ("trajectories", 2.0),
     ("controller_previous_state", [float("nan")]), ("controller_previous_action", 99),
     ("controller_previous_action", True)],
)
def test_fields_of_the_wrong_type_are_refused(field, value):
    meta = _meta()
    setattr(meta, field, value)  # bypass encode's validation, as a hostile client would
    with pytest.raises(MetadataError, match=f"field '{field}'"):
        decode_metadata(pickle.dumps(meta))


def test_extra_attributes_are_refused():
    meta = _meta()
    meta.__dict__["smuggled"] = 1
    with pytest.raises(MetadataError, match="do not match"):
        decode_metadata(pickle.dumps(meta))
