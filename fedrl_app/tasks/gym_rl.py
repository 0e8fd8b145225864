"""Gymnasium RL tasks (CartPole-v1, LunarLander-v3) with DQN-family agents: rollouts and greedy evaluation.

The environment's own reward, no shaping. An environment cannot live in
`context.state`, so each client process keeps its env in a module-level cache and
continues the current episode across rounds; a fresh process starts a new episode
(the partial one is not counted as finished).
"""

from __future__ import annotations

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
class _Episode:
    env: gym.Env
    obs: np.ndarray
    ret: float = 0.0
    length: int = 0


_EPISODES: dict[tuple, _Episode] = {}


@dataclass
class RolloutStats:
    """What one round of interaction produced."""

    episode_returns: list[float] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)
    env_steps: int = 0
    losses: list[float] = field(default_factory=list)


def run_steps(agent: DQNAgent, task: str, key: tuple, seed: int, steps: int,
              env_params: dict[str, float] | None = None, fault: str = "") -> RolloutStats:
    """Act and learn for `steps` environment steps, continuing this client's current episode.

    `env_params`: this client's dynamics (`fedrl_app.tasks.env_variation`). `fault`: a faulty agent's
    behaviour: "random-action" (acts uniformly at random) or "reward-flip" (learns from −r); its
    episode returns are still the environment's own.
    """
    episode = _EPISODES.get(key)
    if episode is None:
        env = make_env(task, env_params)
        obs, _ = env.reset(seed=seed)
        episode = _EPISODES[key] = _Episode(env, obs)
    stats = RolloutStats()
    for _ in range(steps):
        action = int(agent.rng.integers(agent.n_actions)) if fault == "random-action" else agent.act(episode.obs)
        next_obs, reward, terminated, truncated, _ = episode.env.step(action)
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
            episode.obs, _ = episode.env.reset()
            episode.ret, episode.length = 0.0, 0
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
