"""Role "dqn" on the RL tasks: a DQN-family agent that keeps its replay and target network across rounds."""

from __future__ import annotations

import copy
import gzip
import time

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedrl_app.agents.dqn import DQNAgent, QNetwork
from fedrl_app.client.common import attach_metadata, partition
from fedrl_app.client.drills import (
    INFLATED_EXAMPLES,
    MALFORMED_ATTACKS,
    byzantine_update,
    is_byzantine,
    malformed_reply,
    poison_experience,
)
from fedrl_app.config import RunConfig
from fedrl_app.protocol import keys
from fedrl_app.protocol.experience import pack_experience
from fedrl_app.protocol.metadata import ClientMetadata
from fedrl_app.protocol.records import recorddict_nbytes
from fedrl_app.tasks.gym_rl import EpisodeLog, env_dims, evaluate_policy, run_steps

AGENT_STATE_KEY = "dqn-agent"
EPISODE_STATE_KEY = "dqn-episode"  # the EpisodeLog: any process continues this client's episode


def episode_log_to_record(log: EpisodeLog) -> ConfigRecord:
    """The log as a ConfigRecord for `context.state` (actions as int32 bytes: an empty list has no element type)."""
    return ConfigRecord({"rng-state": log.rng_state, "actions": np.asarray(log.actions, dtype=np.int32).tobytes()})


def episode_log_from_record(record: ConfigRecord) -> EpisodeLog:
    """Inverse of `episode_log_to_record`."""
    return EpisodeLog(str(record["rng-state"]), np.frombuffer(record["actions"], dtype=np.int32).tolist())


def gzip_size(record: ArrayRecord) -> int:
    """Bytes gzip (level 6) makes of the record's raw array data: float32 weights barely compress, so they go as is."""
    return len(gzip.compress(b"".join(v.numpy().tobytes() for v in record.values()), compresslevel=6))


def recent_sample(agent: DQNAgent, recent: int, n: int, seed: int):
    """Up to n transitions drawn without replacement from the `recent` newest in the replay buffer."""
    buf = agent.buffer
    recent = min(recent, buf.size)
    newest = (buf.pos - 1 - np.arange(recent)) % buf.capacity
    idx = np.random.default_rng(seed + agent.env_steps).choice(newest, size=min(n, recent), replace=False)
    return buf.obs[idx], buf.actions[idx], buf.rewards[idx], buf.next_obs[idx], buf.dones[idx]


def personal_start(received: dict[str, torch.Tensor], own: dict[str, torch.Tensor],
                   share: float, own_names: frozenset[str] = frozenset()) -> dict[str, torch.Tensor]:
    """The network a client starts its round from: (1 − share)·θ_received + share·θ_own, tensor by tensor,
    and θ_own itself for the tensors in `own_names` (a personal head)."""
    if received.keys() != own.keys():
        raise ValueError(f"the received network's tensors {sorted(received)} differ from the client's own {sorted(own)}")
    if not own_names <= received.keys():
        raise ValueError(f"personal tensors {sorted(own_names - received.keys())} are not in the network {sorted(received)}")
    return {k: own[k].clone() if k in own_names else (1.0 - share) * received[k] + share * own[k] for k in received}


def global_upload(received: dict[str, torch.Tensor], start: dict[str, torch.Tensor],
                  trained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """θ_received + (θ_trained − θ_start): what the client learned this round, applied to the network it received."""
    return {k: received[k] + (trained[k] - start[k]) for k in received}


def train(msg: Message, context: Context, cfg: RunConfig) -> Message:
    """Start from the received Q-network (mixed with the client's own by `dqn-personal-share`, its own output
    layers with `dqn-personal-head`), interact
    `steps-per-round` steps, return the new network (the received one plus what was learned)."""
    pid, num_partitions = partition(context)
    server_round = int(msg.content[keys.CONFIG][keys.SERVER_ROUND])
    seed = cfg.seed * 1_000 + pid
    attack = cfg.byzantine_attack if is_byzantine(cfg, pid, num_partitions) else ""
    stored = context.state.config_records.get(AGENT_STATE_KEY)
    if stored is not None:
        agent = DQNAgent.from_bytes(stored["blob"], seed=seed * 10_007 + server_round)
    else:
        agent = DQNAgent(*env_dims(cfg.task), cfg.dqn_config(), seed=seed)
    # The global network replaces the online one (or, with a personal share β, 1 − β of it; with a personal head,
    # all but the output layers); the local target network, replay buffer and exploration schedule carry on (a
    # real target network, not a copy of the global).
    received = msg.content[keys.ARRAYS].to_torch_state_dict()
    own_names = agent.q.head_names() if cfg.dqn_personal_head else frozenset()
    personal = (cfg.dqn_personal_share > 0 or bool(own_names)) and stored is not None  # round 1: no own network yet
    start_state = (personal_start(received, agent.q.state_dict(), cfg.dqn_personal_share, own_names) if personal
                   else received)
    agent.q.load_state_dict(start_state)
    act0, train0 = agent.act_flops, agent.train_flops
    start = time.perf_counter()
    global_params = [received[name].detach().clone() for name, _ in agent.q.named_parameters()]
    episode = context.state.config_records.get(EPISODE_STATE_KEY)
    stats = run_steps(agent, cfg.task, key=(context.run_id, pid, cfg.task), seed=seed, steps=cfg.steps_per_round,
                      env_params=cfg.env_params(pid), fault=attack,
                      episode_log=episode_log_from_record(episode) if episode is not None else None)
    elapsed = time.perf_counter() - start
    context.state[AGENT_STATE_KEY] = ConfigRecord({"blob": agent.to_bytes()})
    context.state[EPISODE_STATE_KEY] = episode_log_to_record(stats.episode_log)

    lies = attack in ("sign-flip", "scale", "sparse-scale", "noise")  # it learns honestly; only what it sends lies
    sent = copy.deepcopy(agent.q) if personal or lies else agent.q
    if personal:  # the server gets what was learned, on the network it sent, not θ_own
        sent.load_state_dict(global_upload(received, start_state, agent.q.state_dict()))
    if lies:
        byzantine_update(global_params, sent, attack, cfg.byzantine_scale,
                         rng=torch.Generator().manual_seed(seed * 7 + server_round))
    claimed = INFLATED_EXAMPLES if attack == "weight-inflation" else stats.env_steps
    content = RecordDict({
        keys.ARRAYS: ArrayRecord(sent.state_dict()),
        keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: claimed, "episodes": len(stats.episode_returns)}),
    })
    raw_bytes = gzip_bytes = None
    if msg.content[keys.CONFIG].get(keys.SHARE_EXPERIENCE, False):
        batch = recent_sample(agent, stats.env_steps, cfg.experience_sample, seed)
        if attack.startswith("poison-"):
            batch = poison_experience(batch, attack, np.random.default_rng(seed * 7 + server_round))
        content[keys.EXPERIENCE], raw_bytes = pack_experience(*batch)
        gzip_bytes = len(content[keys.EXPERIENCE]["gz"])
    meta = ClientMetadata(
        partition_id=pid, num_examples=claimed, train_time_s=elapsed,
        epoch_losses=[float(sum(stats.losses) / len(stats.losses))] if stats.losses else [],
        bytes_sent=recorddict_nbytes(content), episode_returns=stats.episode_returns,
        episode_lengths=stats.episode_lengths, env_steps=stats.env_steps,
        act_flops=int(agent.act_flops - act0), train_flops=int(agent.train_flops - train0),
        experience_raw_bytes=raw_bytes, experience_gzip_bytes=gzip_bytes,
        model_gzip_bytes=gzip_size(content[keys.ARRAYS]),
    )
    attach_metadata(content, meta)
    if attack in MALFORMED_ATTACKS:
        malformed_reply(content, attack)
    return Message(content=content, reply_to=msg)


def evaluate(msg: Message, context: Context, cfg: RunConfig) -> Message:
    """Greedy episodes of the received Q-network on this client's environment (with `dqn-personal-head`, the
    received body under the client's own head: the network it would act with)."""
    pid = partition(context)[0]
    net = QNetwork(*env_dims(cfg.task), cfg.dqn_hidden, "dueling" in cfg.agent)
    received = msg.content[keys.ARRAYS].to_torch_state_dict()
    stored = context.state.config_records.get(AGENT_STATE_KEY)
    if cfg.dqn_personal_head and stored is not None:
        own = DQNAgent.q_state_from_bytes(stored["blob"])
        received = personal_start(received, own, 0.0, net.head_names())
    net.load_state_dict(received)
    returns = evaluate_policy(net, cfg.task, cfg.eval_episodes, seed=20_000 + 100 * pid, env_params=cfg.env_params(pid))
    metrics = MetricRecord({keys.NUM_EXAMPLES: len(returns), "return": sum(returns) / len(returns)})
    return Message(content=RecordDict({keys.METRICS: metrics}), reply_to=msg)
