"""Roles "supervised" and "sync-controller" on MNIST: train the CNN locally (FedAvg, FedProx, SCAFFOLD, DP, drl-compress).

The reply carries the trained model (`ARRAYS`) or, for the sync controller, whatever update it
chose to send (`fedrl_app.client.sync`); SCAFFOLD adds Δc_i. The client keeps its SCAFFOLD
control variate c_i and a short loss history in `context.state`.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedrl_app.client.common import attach_metadata, partition
from fedrl_app.client.drills import (
    INFLATED_EXAMPLES,
    MALFORMED_ATTACKS,
    byzantine_update,
    is_byzantine,
    malformed_reply,
)
from fedrl_app.client.sync import ClientSystem, decide_and_encode
from fedrl_app.config import RunConfig
from fedrl_app.protocol import keys
from fedrl_app.protocol.metadata import ClientMetadata
from fedrl_app.protocol.records import recorddict_nbytes, to_numpy
from fedrl_app.systems.clock import samples_within_deadline
from fedrl_app.systems.profiles import systems_model
from fedrl_app.tasks import mnist

SCAFFOLD_STATE_KEY = "scaffold-ci"
HISTORY_KEY = "history"
PLATEAU_TOLERANCE = 0.01  # relative loss change under which a client reports `converged`


def client_data(cfg: RunConfig, context: Context):
    """(partition id, (train, local test)) of this node."""
    pid, num = partition(context)
    source = mnist.resolve_source(cfg.data_path)
    train, test = mnist.load_partition(source, pid, num, cfg.dirichlet_alpha, cfg.seed, cfg.local_test_fraction,
                                       cfg.max_client_examples)
    group = mnist.shift_group(pid)
    return pid, (mnist.apply_shift(train, cfg.data_shift, group), mnist.apply_shift(test, cfg.data_shift, group))


def train(msg: Message, context: Context, cfg: RunConfig) -> Message:
    """Train the received model on this partition; reply with the model (or the controller's update)."""
    pid, (train_data, test_data) = client_data(cfg, context)
    num_partitions = partition(context)[1]
    config = msg.content[keys.CONFIG]
    server_round = int(config[keys.SERVER_ROUND])
    net = mnist.Net(cfg.mnist_width)
    net.load_state_dict(msg.content[keys.ARRAYS].to_torch_state_dict())
    global_params = [p.detach().clone() for p in net.parameters()]
    use_controller = config.get(keys.ROLE) == keys.ROLE_SYNC_CONTROLLER
    if use_controller:  # the controller's state and reward need the received model's local accuracy
        global_weights = to_numpy(msg.content[keys.ARRAYS])
        _, local_accuracy = mnist.evaluate(net, test_data, cfg.eval_batch_size)

    # SCAFFOLD: the server sends its control variate c; we keep ours (c_i) in context.state.
    correction = c_server = c_local = None
    if keys.CONTROL in msg.content.array_records:
        c_server = [t.float() for t in msg.content[keys.CONTROL].to_torch_state_dict().values()]
        stored = context.state.array_records.get(SCAFFOLD_STATE_KEY)
        c_local = ([t.float() for t in stored.to_torch_state_dict().values()] if stored
                   else [torch.zeros_like(c) for c in c_server])
        correction = [c - ci for c, ci in zip(c_server, c_local)]

    profile = systems_model(cfg.systems_profile, cfg.seed).profile(pid)
    n = len(train_data[0])
    if cfg.local_work == "samples":  # fixed local work, as FedScale's local steps × batch size
        n = min(cfg.local_samples, n)
    elif cfg.local_work == "deadline":  # partial work: what fits before the deadline
        dense_bytes = recorddict_nbytes(RecordDict({keys.ARRAYS: msg.content[keys.ARRAYS]}))
        n = samples_within_deadline(profile, recorddict_nbytes(msg.content), dense_bytes,
                                    int(config[keys.LOCAL_EPOCHS]), cfg.round_deadline_s, n,
                                    minimum=int(config[keys.BATCH_SIZE]))
    if n < len(train_data[0]):  # a fresh random subset each round
        keep = torch.from_numpy(np.random.default_rng(cfg.seed * 7_919 + pid * 101 + server_round)
                                .permutation(len(train_data[0]))[:n])
        train_data = (train_data[0][keep], train_data[1][keep])

    lr = float(config[keys.LR])
    result = mnist.train(
        net, train_data, epochs=int(config[keys.LOCAL_EPOCHS]), batch_size=int(config[keys.BATCH_SIZE]), lr=lr,
        momentum=float(config.get(keys.MOMENTUM, 0.0)), proximal_mu=float(config.get(keys.PROXIMAL_MU, 0.0)),
        control_correction=correction, seed=cfg.seed * 100_003 + pid * 1_009 + server_round,
    )

    attacking = is_byzantine(cfg, pid, num_partitions)
    if attacking:
        byzantine_update(global_params, net, cfg.byzantine_attack, cfg.byzantine_scale)
    claimed = INFLATED_EXAMPLES if attacking and cfg.byzantine_attack == "weight-inflation" else len(train_data[0])
    metrics = MetricRecord({keys.NUM_EXAMPLES: claimed, "loss": result.epoch_losses[-1]})
    sync = None
    if use_controller:
        local_weights = {k: v.detach().numpy() for k, v in net.state_dict().items()}
        system = ClientSystem(profile, recorddict_nbytes(msg.content),
                              len(train_data[0]) * int(config[keys.LOCAL_EPOCHS]), cfg.round_deadline_s,
                              pace_s=float(config.get(keys.ROUND_PACE_S, 0.0)))
        controller_config = replace(cfg.controller_config(), bytes_penalty=float(config[keys.BYTES_PENALTY]))
        sync = decide_and_encode(
            context, global_weights, local_weights, local_accuracy, server_round,
            int(config[keys.NUM_SERVER_ROUNDS]), float(config[keys.BYTES_PENALTY]), float(config[keys.PRUNE_THRESHOLD]),
            seed=cfg.seed * 1_000 + pid, policy=str(config.get(keys.SYNC_POLICY, "dqn")),
            reward_kind=str(config.get(keys.CONTROLLER_REWARD, "own-gain")),
            accuracy_of=lambda weights: _local_accuracy(weights, test_data, cfg.eval_batch_size, cfg.mnist_width),
            controller_config=controller_config, system=system,
            shared_q=to_numpy(msg.content[keys.CONTROLLER]) if keys.CONTROLLER in msg.content.array_records else None,
            residual_on_dense=cfg.residual_on_dense,
        )
        content = RecordDict({**sync.records, keys.METRICS: metrics})
    else:
        content = RecordDict({keys.ARRAYS: ArrayRecord(net.state_dict()), keys.METRICS: metrics})
    if c_server is not None:
        names = [n for n, _ in net.named_parameters()]
        steps = max(result.num_steps, 1)
        c_new = [ci - c + (g - p.detach()) / (steps * lr)
                 for ci, c, g, p in zip(c_local, c_server, global_params, net.parameters())]
        context.state[SCAFFOLD_STATE_KEY] = ArrayRecord(dict(zip(names, c_new)))
        content[keys.CONTROL_DELTA] = ArrayRecord({n: cn - ci for n, cn, ci in zip(names, c_new, c_local)})

    history = context.state.config_records.get(HISTORY_KEY, ConfigRecord({"losses": []}))
    losses = list(history["losses"]) + result.epoch_losses
    context.state[HISTORY_KEY] = ConfigRecord({"losses": losses[-10:]})
    converged = len(losses) >= 2 and abs(losses[-1] - losses[-2]) <= PLATEAU_TOLERANCE * max(losses[-2], 1e-12)

    meta = ClientMetadata(
        partition_id=pid, num_examples=claimed, train_time_s=result.train_time_s,
        epoch_losses=[float(x) for x in result.epoch_losses], converged=bool(converged),
        bytes_sent=recorddict_nbytes(content),
    )
    if sync is not None:
        meta.sync_decision, meta.compression_rate = sync.action, sync.compression_rate
        meta.staleness, meta.gradient_divergence = sync.staleness, sync.divergence
        meta.local_accuracy, meta.controller_reward, meta.controller_state = local_accuracy, sync.reward, sync.state
        meta.controller_previous_state, meta.controller_previous_action = sync.previous_state, sync.previous_action
    attach_metadata(content, meta)
    if cfg.byzantine_attack in MALFORMED_ATTACKS and attacking:
        malformed_reply(content, cfg.byzantine_attack)
    return Message(content=content, reply_to=msg)


def _local_accuracy(weights: dict[str, np.ndarray], test_data, batch_size: int, width: int) -> float:
    """Accuracy of the CNN with `weights` (numpy) on this client's held-out split."""
    probe = mnist.Net(width)
    probe.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    return mnist.evaluate(probe, test_data, batch_size)[1]


def evaluate(msg: Message, context: Context, cfg: RunConfig) -> Message:
    """Loss and accuracy of the received model on this client's held-out local test split."""
    _, (_, test_data) = client_data(cfg, context)
    net = mnist.Net(cfg.mnist_width)
    net.load_state_dict(msg.content[keys.ARRAYS].to_torch_state_dict())
    loss, accuracy = mnist.evaluate(net, test_data, cfg.eval_batch_size)
    metrics = MetricRecord({keys.NUM_EXAMPLES: len(test_data[0]), "loss": loss, "accuracy": accuracy})
    return Message(content=RecordDict({keys.METRICS: metrics}), reply_to=msg)
