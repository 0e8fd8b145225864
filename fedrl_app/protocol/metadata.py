"""Client -> server metadata: a dataclass pickled into a ConfigRecord, decoded through an allowlist.

Clients are not trusted. Decoding never imports or calls anything except the project's
metadata classes and a few inert builtins, refuses oversized or malformed payloads, and
type-checks every field before the strategy sees it. Its cost is linear in the payload's bytes:
a pickle can share one object many times over (memo references), so no check walks a value
deeper than its top level, integers are bounded before any arithmetic, and an error message
describes a bad value by its type and size (`brief`), never by rendering it.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from dataclasses import dataclass, field, fields

from flwr.app import ConfigRecord, RecordDict

from fedrl_app.protocol import keys
from fedrl_app.protocol.untrusted import brief
from fedrl_app.protocol.untrusted import count as _count
from fedrl_app.protocol.untrusted import finite_number as _finite_number

MAX_METADATA_BYTES = 64 * 1024


class MetadataError(ValueError):
    """A metadata payload was refused (names a forbidden global, oversized, malformed)."""


@dataclass
class ClientMetadata:
    """What a client reports about one round of local work.

    Fields later issues fill (sync decision, staleness, divergence, compression rate)
    default to None so every task and strategy can share one contract.
    """

    partition_id: int
    num_examples: int
    train_time_s: float
    epoch_losses: list[float] = field(default_factory=list)
    converged: bool = False
    bytes_sent: int = 0
    sync_decision: str | None = None
    staleness: int | None = None
    gradient_divergence: float | None = None
    compression_rate: float | None = None
    local_accuracy: float | None = None
    controller_reward: float | None = None
    controller_state: list[float] | None = None
    # the decision `controller_reward` rewards (the client's previous one): a shared controller learns from it
    controller_previous_state: list[float] | None = None
    controller_previous_action: int | None = None
    episode_returns: list[float] | None = None
    episode_lengths: list[int] | None = None
    env_steps: int | None = None
    act_flops: int | None = None
    train_flops: int | None = None
    experience_raw_bytes: int | None = None  # fusion: shared transitions before gzip
    experience_gzip_bytes: int | None = None  # ... and after (what travels)
    model_gzip_bytes: int | None = None      # RL: what gzip would make of the model arrays sent (measured, not applied)
    # policy-gradient strategies (fedpg, lapg, afedpg)
    trajectories: int | None = None          # episodes behind the gradient estimate
    gradient_norm: float | None = None       # ‖ĝ‖₂ of this round's estimate (sent or not)
    gradient_uploaded: bool | None = None    # lapg: False = lazy skip, the server reuses the last upload
    gradient_change: float | None = None     # lapg: ‖ĝ_new − ĝ_last uploaded‖² (None before a first upload)
    lazy_bound: float | None = None          # lapg: the right-hand side the change was compared with

    def validate(self) -> None:
        """Type- and range-check every field; raise MetadataError naming the field."""
        _check(_count(self.partition_id), "partition_id", self.partition_id)
        _check(_count(self.num_examples), "num_examples", self.num_examples)
        _check(_finite_number(self.train_time_s) and self.train_time_s >= 0, "train_time_s", self.train_time_s)
        _check(
            isinstance(self.epoch_losses, list) and all(_finite_number(x) for x in self.epoch_losses),
            "epoch_losses",
            self.epoch_losses,
        )
        _check(isinstance(self.converged, bool), "converged", self.converged)
        _check(_count(self.bytes_sent), "bytes_sent", self.bytes_sent)
        _check(self.sync_decision is None or isinstance(self.sync_decision, str), "sync_decision", self.sync_decision)
        _check(self.staleness is None or _count(self.staleness), "staleness", self.staleness)
        for name in ("gradient_divergence", "compression_rate", "local_accuracy", "controller_reward"):
            value = getattr(self, name)
            _check(value is None or _finite_number(value), name, value)
        _check(_optional_list(self.controller_state, _finite_number, max_len=64), "controller_state",
               self.controller_state)
        _check(_optional_list(self.controller_previous_state, _finite_number, max_len=64),
               "controller_previous_state", self.controller_previous_state)
        _check(self.controller_previous_action is None or (
            isinstance(self.controller_previous_action, int) and not isinstance(self.controller_previous_action, bool)
            and 0 <= self.controller_previous_action < 16), "controller_previous_action", self.controller_previous_action)
        _check(len(self.epoch_losses) <= 10_000, "epoch_losses", f"{len(self.epoch_losses)} entries")
        _check(_optional_list(self.episode_returns, _finite_number), "episode_returns", self.episode_returns)
        _check(_optional_list(self.episode_lengths, _count), "episode_lengths", self.episode_lengths)
        for name in ("gradient_norm", "gradient_change", "lazy_bound"):
            value = getattr(self, name)
            _check(value is None or (_finite_number(value) and value >= 0), name, value)
        _check(self.gradient_uploaded is None or isinstance(self.gradient_uploaded, bool), "gradient_uploaded",
               self.gradient_uploaded)
        for name in ("env_steps", "act_flops", "train_flops", "trajectories", "experience_raw_bytes",
                     "experience_gzip_bytes", "model_gzip_bytes"):
            value = getattr(self, name)
            _check(value is None or _count(value), name, value)


# (module, qualname) pairs the decoder may resolve. Nothing else is ever imported.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("fedrl_app.protocol.metadata", "ClientMetadata"),
    }
)
_METADATA_CLASSES = (ClientMetadata,)


class _AllowlistUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> type:
        if (module, name) not in ALLOWED_GLOBALS:
            raise MetadataError(f"payload names global '{module}.{name}', which is not in the allowlist")
        return super().find_class(module, name)

    def persistent_load(self, pid: object) -> object:
        raise MetadataError("payload uses persistent ids, which are not allowed")


def encode_metadata(meta: ClientMetadata) -> ConfigRecord:
    """Pickle a metadata dataclass into a ConfigRecord (client side)."""
    meta.validate()
    return ConfigRecord({keys.METADATA_PAYLOAD: pickle.dumps(meta, protocol=pickle.HIGHEST_PROTOCOL)})


def decode_metadata(payload: bytes) -> ClientMetadata:
    """Decode an untrusted payload into a validated metadata object (server side).

    Raises
    ------
    MetadataError
        If the payload is too large, names a global outside the allowlist, is
        truncated or otherwise malformed, or holds fields of the wrong type.
    """
    if not isinstance(payload, bytes):
        raise MetadataError(f"payload must be bytes, got {type(payload).__name__}")
    if len(payload) > MAX_METADATA_BYTES:
        raise MetadataError(f"payload is {len(payload)} bytes, over the {MAX_METADATA_BYTES}-byte limit")
    _check_opcodes(payload)
    try:
        obj = _AllowlistUnpickler(io.BytesIO(payload)).load()
    except MetadataError:
        raise
    except Exception as err:  # truncated / corrupt pickles raise many types
        raise MetadataError(f"payload is not a valid pickle ({type(err).__name__}: {str(err)[:200]})") from None
    if type(obj) not in _METADATA_CLASSES:  # exactly the class: a subclass could not be named anyway
        raise MetadataError(f"payload decodes to {type(obj).__name__}, not a metadata class")
    expected = [f.name for f in fields(obj)]
    names = list(vars(obj))
    if not all(isinstance(n, str) for n in names) or set(names) != set(expected):
        unexpected = [brief(n) for n in names if n not in expected][:5]
        missing = [n for n in expected if n not in names][:5]
        raise MetadataError(f"payload fields do not match the metadata class: missing {missing}, unexpected "
                            f"{unexpected} ({len(names)} fields)")
    obj.validate()
    return obj


MEMO_OPCODES = {"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"}
REFUSED_OPCODES = {"EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID"}


def _check_opcodes(payload: bytes) -> None:
    """One linear pass over the opcodes before anything is unpickled (≈ 25 ms for 64 KB of one-byte opcodes).

    A memo index sizes the unpickler's memo table: `LONG_BINPUT 16777216` in a 600-byte payload made it
    allocate 128 MB and take 200 ms (found by the fuzz profile). A pickle of n bytes needs at most n memo
    entries, so a larger index is refused, as are the extension registry and persistent ids.
    """
    try:
        for opcode, arg, position in pickletools.genops(payload):
            if opcode.name in MEMO_OPCODES and isinstance(arg, int) and not 0 <= arg <= len(payload):
                raise MetadataError(f"payload uses memo index {brief(arg)} at byte {position}; a {len(payload)}-byte "
                                    "pickle needs no index beyond its length")
            if opcode.name in REFUSED_OPCODES:
                raise MetadataError(f"payload uses opcode {opcode.name} at byte {position}, which is not allowed")
    except MetadataError:
        raise
    except Exception as err:  # pickletools raises ValueError on a truncated or unknown opcode
        raise MetadataError(f"payload is not a valid pickle ({type(err).__name__}: {str(err)[:200]})") from None


def read_metadata(content: RecordDict) -> ClientMetadata:
    """Find and decode the metadata ConfigRecord of a reply."""
    record = content.config_records.get(keys.METADATA)
    if record is None:
        raise MetadataError(f"reply has no '{keys.METADATA}' ConfigRecord")
    payload = record.get(keys.METADATA_PAYLOAD)
    if payload is None:
        raise MetadataError(f"'{keys.METADATA}' record has no '{keys.METADATA_PAYLOAD}' entry")
    return decode_metadata(payload)


def _optional_list(value: object, item_ok, max_len: int = 100_000) -> bool:
    """None, or a list of at most `max_len` items that each pass `item_ok`."""
    return value is None or (isinstance(value, list) and len(value) <= max_len and all(item_ok(x) for x in value))


def _check(ok: bool, name: str, value: object) -> None:
    if not ok:
        raise MetadataError(f"metadata field '{name}' has an invalid value {brief(value)}")
