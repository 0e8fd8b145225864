"""Client state that survives a SuperNode restart: `context.state` saved atomically to a node-local directory.

A SuperNode keeps each run's `context.state` (SCAFFOLD's c_i, the sync controller, the DQN agent with its
replay buffer and ε schedule, LAPG's last upload) in memory only; a restart loses it. With node config
`state-dir=PATH` the ClientApp saves that state after every message it answers, to
`PATH/partition-<id>.state` (write to a temporary file, then rename: a crash never leaves half a file),
and a SuperNode that comes back with an empty state loads it. The file is tagged with the experiment
(the run config without the keys a resume may change), so a resumed run (`resume-from`, a new run id)
picks its clients' state up again while another experiment starts clean. Without `state-dir` (the
default, and simulation) nothing is written.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from fedrl_app.config import ConfigError, RunConfig

STATE_DIR_KEY = "state-dir"
# keys a resumed run may change without being another experiment
RESUME_KEYS = ("resume-from", "num-server-rounds", "outputs-dir", "wandb-mode", "round-timeout")
MAGIC = b"fedrl-client-state-1\n"


def experiment_tag(run_config: dict) -> str:
    """A digest of the run config (typed and completed with the defaults) that ignores the keys a resume may change."""
    try:
        run_config = RunConfig.from_run_config(run_config).as_dict()
    except ConfigError:
        pass  # a config the app would refuse anyway: tag it as it is
    kept = {k: v for k, v in sorted(run_config.items()) if k not in RESUME_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:32]


def state_path(context: Context) -> Path | None:
    """Where this node's state goes, or None without `state-dir`."""
    directory = context.node_config.get(STATE_DIR_KEY)
    if not directory:
        return None
    return Path(str(directory)).expanduser() / f"partition-{int(context.node_config['partition-id'])}.state"


def save_state(context: Context, path: Path) -> None:
    """Write `context.state` and its experiment tag atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tag = experiment_tag(dict(context.run_config)).encode()
    tmp.write_bytes(MAGIC + tag + b"\n" + recorddict_to_proto(context.state).SerializeToString())
    os.replace(tmp, path)


def load_state(context: Context, path: Path) -> bool:
    """Fill an empty `context.state` from `path` if it holds this experiment's state; True if it did."""
    if len(context.state) or not path.is_file():
        return False
    data = path.read_bytes()
    tag = experiment_tag(dict(context.run_config)).encode()
    if not data.startswith(MAGIC + tag + b"\n"):
        return False  # another experiment's state (or another format): start clean
    proto = ProtoRecordDict()
    proto.ParseFromString(data[len(MAGIC) + len(tag) + 1:])
    for name, record in recorddict_from_proto(proto).items():
        context.state[name] = record
    return True


def persistent_state_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Load this node's saved state if the SuperNode came back empty; save it after answering."""
    path = state_path(context)
    if path is None:
        return call_next(msg, context)
    load_state(context, path)
    reply = call_next(msg, context)
    save_state(context, path)
    return reply
