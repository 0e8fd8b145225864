"""ClientApp: local training and evaluation on this node's partition."""

from __future__ import annotations

import os
import pickle
import time

import numpy as np

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fedrl_app import pg_client, rl_client
from fedrl_app.agents.dqn import QNetwork
from fedrl_app.agents.policy_gradient import PolicyNetwork
from fedrl_app.config import RL_TASKS, RunConfig
from fedrl_app.metadata import METADATA_PAYLOAD_KEY, METADATA_RECORD_KEY, ClientMetadata, encode_metadata
from fedrl_app.payload import recorddict_nbytes
from fedrl_app.sync_client import decide_and_encode
from fedrl_app.tasks import mnist
from fedrl_app.tasks.gym_rl import env_dims, evaluate_policy

app = ClientApp()

SCAFFOLD_STATE_KEY = "scaffold-ci"
HISTORY_KEY = "history"
PLATEAU_TOLERANCE = 0.01  # relative loss change under which a client reports `converged`

torch.set_num_threads(int(os.environ.get("FEDRL_TORCH_THREADS", "1")))


def _partition(context: Context) -> tuple[int, int]:
    try:
        return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    except KeyError as err:
        raise ValueError(f"node config lacks {err}; start the SuperNode with "
                         "--node-config 'partition-id=N num-partitions=M'") from None


def inject_fault(cfg: RunConfig, pid: int, server_round: int) -> None:
    """Fault injection for tests and drills: this partition raises, or answers late, in that round."""
    if not cfg.fault_mode or pid != cfg.fault_partition or cfg.fault_round not in (0, server_round):
        return
    if cfg.fault_mode == "raise":
        raise RuntimeError(f"injected fault: partition {pid} raises in round {server_round}")
    time.sleep(cfg.fault_hang_s)  # "hang": the reply comes after the server's round timeout


def is_byzantine(cfg: RunConfig, pid: int, num_partitions: int) -> bool:
    """The first round(byzantine-fraction × N) partitions attack (seeded by construction, easy to audit)."""
    return pid < round(cfg.byzantine_fraction * num_partitions)


MALFORMED_ATTACKS = ("nan", "wrong-shape", "pickle-exploit")


class _ExploitPayload:
    """Pickles to a call of os.system: what a hostile client would put in its metadata (drills only)."""

    def __reduce__(self):
        return (os.system, ("echo 'fedrl: a metadata payload ran code on the server'",))


def malformed_reply(content: RecordDict, attack: str) -> None:
    """Spoil a finished reply in place, as a hostile client would: the server must refuse it and go on.

    "nan": a NaN in the first array; "wrong-shape": the first array one entry short;
    "pickle-exploit": metadata that names os.system (refused by the allowlist, never run).
    """
    if attack == "pickle-exploit":
        content[METADATA_RECORD_KEY] = ConfigRecord({METADATA_PAYLOAD_KEY: pickle.dumps(_ExploitPayload())})
        return
    name, record = next(iter(content.array_records.items()))  # "arrays", or drl-compress's delta record
    arrays = {k: v.numpy().copy() for k, v in record.items()}
    if attack == "nan":
        key = next((k for k, v in arrays.items() if v.dtype.kind == "f" and v.size), None)
        if key is None:
            raise ValueError("attack 'nan' needs a float array in the reply")
        arrays[key].flat[0] = np.nan
    else:
        first = next(iter(arrays))
        arrays[first] = arrays[first].ravel()[:-1]
    content[name] = ArrayRecord({k: Array(v) for k, v in arrays.items()})


def byzantine_update(global_params: list[torch.Tensor], net: torch.nn.Module, attack: str, scale: float) -> None:
    """Replace the honest update Δ by −Δ (sign-flip) or scale·Δ (scale), in place."""
    if attack in MALFORMED_ATTACKS:
        return  # these spoil the reply instead (malformed_reply)
    factor = -1.0 if attack == "sign-flip" else scale
    with torch.no_grad():
        for g, p in zip(global_params, net.parameters()):
            p.copy_(g + factor * (p - g))


def _client_data(cfg: RunConfig, context: Context):
    pid, num = _partition(context)
    source = mnist.resolve_source(cfg.data_path)
    return pid, mnist.load_partition(source, pid, num, cfg.dirichlet_alpha, cfg.seed, cfg.local_test_fraction,
                                     cfg.max_client_examples)


def dp_clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's `fixedclipping_mod` when the server asks for client-side clipping (dp-mode "client"), else a no-op."""
    if KEY_CLIPPING_NORM in msg.content.config_records.get("config", {}):
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


@app.train(mods=[dp_clipping_mod])
def train(msg: Message, context: Context) -> Message:
    """Train the received model locally (FedAvg/FedProx/FedAdagrad/SCAFFOLD alike)."""
    cfg = RunConfig.from_run_config(context.run_config)
    inject_fault(cfg, _partition(context)[0], int(msg.content["config"]["server-round"]))
    if cfg.task in RL_TASKS:
        if msg.content["config"].get("pg", False):  # fedpg / lapg / afedpg: reply with a gradient estimate
            return pg_client.train(msg, context, cfg, _partition(context)[0])
        return rl_client.train(msg, context, cfg, _partition(context)[0])
    pid, (train_data, test_data) = _client_data(cfg, context)
    config = msg.content["config"]
    server_round = int(config["server-round"])
    net = mnist.Net()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    global_params = [p.detach().clone() for p in net.parameters()]
    use_controller = bool(config.get("sync-controller", False))
    if use_controller:  # the controller's state and reward need the received model's local accuracy
        global_weights = {k: v.numpy() for k, v in msg.content["arrays"].items()}
        _, local_accuracy = mnist.evaluate(net, test_data, cfg.eval_batch_size)

    # SCAFFOLD: the server sends its control variate c; we keep ours (c_i) in context.state.
    correction = c_server = c_local = None
    if "control" in msg.content.array_records:
        c_server = [t.float() for t in msg.content["control"].to_torch_state_dict().values()]
        stored = context.state.array_records.get(SCAFFOLD_STATE_KEY)
        c_local = [t.float() for t in stored.to_torch_state_dict().values()] if stored else [torch.zeros_like(c) for c in c_server]
        correction = [c - ci for c, ci in zip(c_server, c_local)]

    lr = float(config["lr"])
    result = mnist.train(
        net, train_data, epochs=int(config["local-epochs"]), batch_size=int(config["batch-size"]), lr=lr,
        momentum=float(config.get("momentum", 0.0)), proximal_mu=float(config.get("proximal-mu", 0.0)),
        control_correction=correction, seed=cfg.seed * 100_003 + pid * 1_009 + server_round,
    )

    if is_byzantine(cfg, pid, _partition(context)[1]):
        byzantine_update(global_params, net, cfg.byzantine_attack, cfg.byzantine_scale)
    metrics = MetricRecord({"num-examples": len(train_data[0]), "loss": result.epoch_losses[-1]})
    sync = None
    if use_controller:
        local_weights = {k: v.detach().numpy() for k, v in net.state_dict().items()}
        sync = decide_and_encode(
            context, global_weights, local_weights, local_accuracy, server_round,
            int(config["num-server-rounds"]), float(config["bytes-penalty"]), float(config["prune-threshold"]),
            seed=cfg.seed * 1_000 + pid, policy=str(config.get("sync-policy", "dqn")),
            reward_kind=str(config.get("controller-reward", "own-gain")),
            accuracy_of=lambda weights: _local_accuracy(weights, test_data, cfg.eval_batch_size),
        )
        content = RecordDict({**sync.records, "metrics": metrics})
    else:
        content = RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": metrics})
    if c_server is not None:
        names = [n for n, _ in net.named_parameters()]
        steps = max(result.num_steps, 1)
        c_new = [ci - c + (g - p.detach()) / (steps * lr)
                 for ci, c, g, p in zip(c_local, c_server, global_params, net.parameters())]
        context.state[SCAFFOLD_STATE_KEY] = ArrayRecord(dict(zip(names, c_new)))
        content["control-delta"] = ArrayRecord({n: cn - ci for n, cn, ci in zip(names, c_new, c_local)})

    history = context.state.config_records.get(HISTORY_KEY, ConfigRecord({"losses": []}))
    losses = list(history["losses"]) + result.epoch_losses
    context.state[HISTORY_KEY] = ConfigRecord({"losses": losses[-10:]})
    converged = len(losses) >= 2 and abs(losses[-1] - losses[-2]) <= PLATEAU_TOLERANCE * max(losses[-2], 1e-12)

    meta = ClientMetadata(
        partition_id=pid, num_examples=len(train_data[0]), train_time_s=result.train_time_s,
        epoch_losses=[float(x) for x in result.epoch_losses], converged=bool(converged),
        bytes_sent=recorddict_nbytes(content),
    )
    if sync is not None:
        meta.sync_decision, meta.compression_rate = sync.action, sync.compression_rate
        meta.staleness, meta.gradient_divergence = sync.staleness, sync.divergence
        meta.local_accuracy, meta.controller_reward, meta.controller_state = local_accuracy, sync.reward, sync.state
    content[METADATA_RECORD_KEY] = encode_metadata(meta)
    if cfg.byzantine_attack in MALFORMED_ATTACKS and is_byzantine(cfg, pid, _partition(context)[1]):
        malformed_reply(content, cfg.byzantine_attack)
    return Message(content=content, reply_to=msg)


def _local_accuracy(weights: dict, test_data, batch_size: int) -> float:
    """Accuracy of the CNN with `weights` (numpy) on this client's held-out split."""
    probe = mnist.Net()
    probe.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    return mnist.evaluate(probe, test_data, batch_size)[1]


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received model on this client's held-out local test split (RL: greedy episodes)."""
    cfg = RunConfig.from_run_config(context.run_config)
    if cfg.task in RL_TASKS:
        pid = _partition(context)[0]
        if msg.content["config"].get("pg", False):
            net = PolicyNetwork(*env_dims(cfg.task), cfg.pg_hidden)
        else:
            net = QNetwork(*env_dims(cfg.task), cfg.dqn_hidden, "dueling" in cfg.agent)
        net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        returns = evaluate_policy(net, cfg.task, cfg.eval_episodes, seed=20_000 + 100 * pid)
        metrics = MetricRecord({"num-examples": len(returns), "return": sum(returns) / len(returns)})
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
    _, (_, test_data) = _client_data(cfg, context)
    net = mnist.Net()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loss, accuracy = mnist.evaluate(net, test_data, cfg.eval_batch_size)
    metrics = MetricRecord({"num-examples": len(test_data[0]), "loss": loss, "accuracy": accuracy})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
