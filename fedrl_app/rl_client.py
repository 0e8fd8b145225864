"""ClientApp side of the RL tasks: a DQN-family agent that keeps its replay and target network across rounds."""

from __future__ import annotations

import gzip
import time

import numpy as np

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedrl_app.agents.dqn import DQNAgent, DQNConfig
from fedrl_app.config import RunConfig
from fedrl_app.experience import EXPERIENCE_KEY, pack_experience
from fedrl_app.metadata import METADATA_RECORD_KEY, ClientMetadata, encode_metadata
from fedrl_app.payload import recorddict_nbytes
from fedrl_app.tasks.gym_rl import env_dims, run_steps

AGENT_STATE_KEY = "dqn-agent"


def dqn_config(cfg: RunConfig) -> DQNConfig:
    """The agent's hyperparameters from the run config."""
    return DQNConfig.for_agent(
        cfg.agent, hidden=cfg.dqn_hidden, learning_starts=cfg.dqn_learning_starts,
        epsilon_decay_steps=cfg.dqn_epsilon_decay_steps, batch_size=cfg.dqn_batch_size,
        train_frequency=cfg.dqn_train_frequency, target_update_every=cfg.dqn_target_update_every,
    )


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


def train(msg: Message, context: Context, cfg: RunConfig, pid: int) -> Message:
    """Start from the received Q-network, interact `steps-per-round` steps, return the new network."""
    server_round = int(msg.content["config"]["server-round"])
    seed = cfg.seed * 1_000 + pid
    stored = context.state.config_records.get(AGENT_STATE_KEY)
    if stored is not None:
        agent = DQNAgent.from_bytes(stored["blob"], seed=seed * 10_007 + server_round)
    else:
        agent = DQNAgent(*env_dims(cfg.task), dqn_config(cfg), seed=seed)
    # The global network replaces the online one; the local target network, replay buffer
    # and exploration schedule carry on (a real target network, not a copy of the global).
    agent.q.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    act0, train0 = agent.act_flops, agent.train_flops
    start = time.perf_counter()
    stats = run_steps(agent, cfg.task, key=(context.run_id, pid, cfg.task), seed=seed, steps=cfg.steps_per_round)
    elapsed = time.perf_counter() - start
    context.state[AGENT_STATE_KEY] = ConfigRecord({"blob": agent.to_bytes()})

    content = RecordDict({
        "arrays": ArrayRecord(agent.q.state_dict()),
        "metrics": MetricRecord({"num-examples": stats.env_steps, "episodes": len(stats.episode_returns)}),
    })
    raw_bytes = gzip_bytes = None
    if msg.content["config"].get("share-experience", False):
        content[EXPERIENCE_KEY], raw_bytes = pack_experience(*recent_sample(agent, stats.env_steps,
                                                                              cfg.experience_sample, seed))
        gzip_bytes = len(content[EXPERIENCE_KEY]["gz"])
    meta = ClientMetadata(
        partition_id=pid, num_examples=stats.env_steps, train_time_s=elapsed,
        epoch_losses=[float(sum(stats.losses) / len(stats.losses))] if stats.losses else [],
        bytes_sent=recorddict_nbytes(content), episode_returns=stats.episode_returns,
        episode_lengths=stats.episode_lengths, env_steps=stats.env_steps,
        act_flops=int(agent.act_flops - act0), train_flops=int(agent.train_flops - train0),
        experience_raw_bytes=raw_bytes, experience_gzip_bytes=gzip_bytes,
        model_gzip_bytes=gzip_size(content["arrays"]),
    )
    content[METADATA_RECORD_KEY] = encode_metadata(meta)
    return Message(content=content, reply_to=msg)
