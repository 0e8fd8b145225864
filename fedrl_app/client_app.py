"""ClientApp: answer each train or evaluate message with the client role its config names (and a query with
the node's partition).

The role (`fedrl_app.protocol.keys.ROLE`) is chosen by the server's strategy registry; each role
lives in one module of `fedrl_app.client`. Drills (faults, attacks) are `fedrl_app.client.drills`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from flwr.app import Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fedrl_app.client import dqn, policy_gradient, supervised
from fedrl_app.client.common import partition
from fedrl_app.client.drills import inject_fault
from fedrl_app.client.persistence import persistent_state_mod
from fedrl_app.config import RunConfig
from fedrl_app.protocol import keys
from fedrl_app.systems.profiles import systems_model

app = ClientApp()

torch.set_num_threads(int(os.environ.get("FEDRL_TORCH_THREADS", "1")))

Handler = Callable[[Message, Context, RunConfig], Message]
TRAIN: dict[str, Handler] = {
    keys.ROLE_SUPERVISED: supervised.train,
    keys.ROLE_SYNC_CONTROLLER: supervised.train,
    keys.ROLE_DQN: dqn.train,
    keys.ROLE_POLICY_GRADIENT: policy_gradient.train,
}
EVALUATE: dict[str, Handler] = {
    keys.ROLE_SUPERVISED: supervised.evaluate,
    keys.ROLE_SYNC_CONTROLLER: supervised.evaluate,
    keys.ROLE_DQN: dqn.evaluate,
    keys.ROLE_POLICY_GRADIENT: policy_gradient.evaluate,
}


def role_of(msg: Message) -> str:
    """The role the server asked for; a clear error if the config has none or an unknown one."""
    role = msg.content[keys.CONFIG].get(keys.ROLE) if keys.CONFIG in msg.content.config_records else None
    if role not in keys.ROLES:
        raise ValueError(f"the server's config names role {role!r}; a client answers one of {list(keys.ROLES)}")
    return str(role)


def dp_clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's `fixedclipping_mod` when the server asks for client-side clipping (dp-mode "client"), else a no-op."""
    if KEY_CLIPPING_NORM in msg.content.config_records.get(keys.CONFIG, {}):
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


@app.train(mods=[persistent_state_mod, dp_clipping_mod])
def train(msg: Message, context: Context) -> Message:
    """Train as the role asks (after the fault drill, if this partition has one)."""
    cfg = RunConfig.from_run_config(context.run_config)
    role = role_of(msg)
    pid, server_round = partition(context)[0], int(msg.content[keys.CONFIG][keys.SERVER_ROUND])
    attempt = int(msg.content[keys.CONFIG].get(keys.ATTEMPT, 0))
    if not systems_model(cfg.systems_profile, cfg.seed).available(pid, server_round, attempt):
        # the simulated device dropped out (its profile's availability): no training, an error reply
        return Message(Error(code=keys.UNAVAILABLE_CODE, reason=f"{keys.UNAVAILABLE}: partition {pid} dropped "
                                                                 f"out of round {server_round}"), reply_to=msg)
    inject_fault(cfg, pid, server_round)
    return TRAIN[role](msg, context, cfg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received model on this client's data: held-out split (MNIST) or greedy episodes (RL)."""
    cfg = RunConfig.from_run_config(context.run_config)
    return EVALUATE[role_of(msg)](msg, context, cfg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Answer the server's one question, this node's partition (it orders its node list by them), with the number
    of partitions (the server waits for that many nodes before its first round)."""
    asked = msg.content.config_records.get(keys.CONFIG, {}).get(keys.QUERY)
    if asked != keys.PARTITION_ID:
        raise ValueError(f"the server's query asks {asked!r}; a client answers {keys.PARTITION_ID!r} only")
    partition_id, num_partitions = partition(context)
    answer = MetricRecord({keys.PARTITION_ID: partition_id, keys.NUM_PARTITIONS: num_partitions})
    return Message(RecordDict({keys.METRICS: answer}), reply_to=msg)
