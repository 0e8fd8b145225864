"""Gymnasium RL tasks (CartPole-v1, LunarLander-v3) with DQN-family agents: rollouts and greedy evaluation.

The environment's own reward, no shaping. Episodes continue across rounds. An environment cannot
live in `context.state`, so each client process keeps its env in a module-level cache, and the
client also keeps an `EpisodeLog` (the env's random state before the episode's reset, and the actions
since): a process that did not run this client's previous round (Ray hands a partition to whichever
actor is free; a SuperNode restarts) rebuilds the episode by replaying it, instead of starting anew or
continuing a stale copy. A seeded run then repeats whatever the scheduling.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch

from fedrl_app.agents.dqn import DQNAgent
from fedrl_app.tasks.env_variation import ENV_IDS, make_env
SOLVED_RETURN = {"cartpole": 475.0, "lunarlander": 200.0}  # 100-episode moving average


def env_dims(task: str) -> tuple[int, int]:
    """(observation size, number of actions) of a task's environment."""
    env = gym.make(ENV_IDS[task])
    dims = int(np.prod(env.observation_space.shape)), int(env.action_space.n)
    env.close()
    return dims


@dataclass
class EpisodeLog:
    """What rebuilds a client's current episode in any process.

    `rng_state`: the env's random generator state (JSON) just before the episode's `reset()`, or ""
    for the client's first episode (reset with the client's seed). `actions`: every action since.
    """

    rng_state: str = ""
    actions: list[int] = field(default_factory=list)


@dataclass
class _Episode:
    env: gym.Env
    obs: np.ndarray
    log: EpisodeLog
    ret: float = 0.0
    length: int = 0
    agent_steps: int = 0  # the agent's env_steps when this process last left the episode


_EPISODES: dict[tuple, _Episode] = {}


def _rng_state(env: gym.Env) -> str:
    return json.dumps(env.unwrapped.np_random.bit_generator.state)


def _start_episode(env: gym.Env, seed: int, rng_state: str) -> np.ndarray:
    """Reset `env` as the logged episode was: with `seed` for the first one, else from the logged generator state
    (a reset without a seed draws from the env's generator, which `np_random` creates on first access)."""
    if not rng_state:
        return env.reset(seed=seed)[0]
    env.unwrapped.np_random.bit_generator.state = json.loads(rng_state)
    return env.reset()[0]


def replay_episode(task: str, seed: int, log: EpisodeLog, env_params: dict[str, float] | None = None) -> _Episode:
    """A fresh env brought to where the logged episode stands (the env is deterministic given its generator)."""
    env = make_env(task, env_params)
    episode = _Episode(env, _start_episode(env, seed, log.rng_state), EpisodeLog(log.rng_state, list(log.actions)))
    for action in log.actions:
        episode.obs, reward, terminated, truncated, _ = env.step(action)
        episode.ret += float(reward)
        episode.length += 1
        if terminated or truncated:
            raise ValueError(f"the episode log ends its episode after {episode.length} of {len(log.actions)} actions: "
                             "it does not belong to this task, seed and dynamics")
    return episode


def current_episode(task: str, key: tuple, seed: int, agent_steps: int, log: EpisodeLog | None,
                    env_params: dict[str, float] | None = None) -> _Episode:
    """This client's episode: the cached one if this process ran the client's previous steps (its agent has
    taken `agent_steps` steps), else the logged one replayed, else (no log: a first round, or a caller that
    keeps no log) the cached one or a new episode reset with `seed`."""
    cached = _EPISODES.get(key)
    if cached is not None and (log is None or cached.agent_steps == agent_steps):
        return cached
    if log is None:
        log = EpisodeLog()
    episode = _EPISODES[key] = replay_episode(task, seed, log, env_params)
    episode.agent_steps = agent_steps
    return episode


@dataclass
class RolloutStats:
    """What one round of interaction produced."""

    episode_returns: list[float] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)
    env_steps: int = 0
    losses: list[float] = field(default_factory=list)
    episode_log: EpisodeLog = field(default_factory=EpisodeLog)  # where the current episode stands afterwards


def run_steps(agent: DQNAgent, task: str, key: tuple, seed: int, steps: int,
              env_params: dict[str, float] | None = None, fault: str = "",
              episode_log: EpisodeLog | None = None) -> RolloutStats:
    """Act and learn for `steps` environment steps, continuing this client's current episode.

    `key` names the client's episode in this process's cache. `episode_log`: the `stats.episode_log` of
    the client's previous call (keep it with the agent), so that any process continues the same episode;
    None keeps the episode in this process only. `env_params`: this client's dynamics
    (`fedrl_app.tasks.env_variation`). `fault`: a faulty agent's behaviour: "random-action" (acts
    uniformly at random) or "reward-flip" (learns from −r); its episode returns are still the environment's own.
    """
    episode = current_episode(task, key, seed, agent.env_steps, episode_log, env_params)
    stats = RolloutStats()
    for _ in range(steps):
        action = int(agent.rng.integers(agent.n_actions)) if fault == "random-action" else agent.act(episode.obs)
        next_obs, reward, terminated, truncated, _ = episode.env.step(action)
        episode.log.actions.append(action)
        learned = -float(reward) if fault == "reward-flip" else float(reward)
        loss = agent.observe(episode.obs, action, learned, next_obs, bool(terminated))
        if loss is not None:
            stats.losses.append(loss)
        episode.ret += float(reward)
        episode.length += 1
        episode.obs = next_obs
        stats.env_steps += 1
        if terminated or truncated:
            stats.episode_returns.append(episode.ret)
            stats.episode_lengths.append(episode.length)
            episode.log = EpisodeLog(_rng_state(episode.env))
            episode.obs, _ = episode.env.reset()
            episode.ret, episode.length = 0.0, 0
    episode.agent_steps = agent.env_steps
    stats.episode_log = EpisodeLog(episode.log.rng_state, list(episode.log.actions))
    return stats


@torch.no_grad()
def evaluate_policy(q: torch.nn.Module, task: str, episodes: int, seed: int,
                    env_params: dict[str, float] | None = None) -> list[float]:
    """Returns of the greedy policy of `q` (obs -> per-action scores: Q-values or logits) over `episodes`
    episodes, on the nominal environment or on the dynamics `env_params`."""
    env = make_env(task, env_params)
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            action = int(q(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0)).argmax(1).item())
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


def moving_average_solved(returns: list[float], threshold: float, window: int = 100) -> int | None:
    """Index (0-based episode) at which the `window`-episode moving average first reaches `threshold`."""
    if len(returns) < window:
        return None
    averages = np.convolve(returns, np.ones(window) / window, mode="valid")
    hits = np.nonzero(averages >= threshold)[0]
    return int(hits[0]) + window - 1 if hits.size else None
