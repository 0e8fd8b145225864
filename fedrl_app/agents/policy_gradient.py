"""Softmax MLP policy and a REINFORCE policy-gradient estimator (reward-to-go, leave-one-out baseline).

One file, CleanRL-style: the policy, how trajectories are sampled, and the estimator, top to bottom.
A client sends the *gradient estimate* (not new parameters), so everything the server needs for
FedPG, LAPG and AFedPG is `estimate_gradient`:

    ĝ(θ) = (1/n) Σ_i Σ_t ∇_θ log π_θ(a_t^i | s_t^i) · (G_t^i − b_t^{−i}),

    G_t^i = Σ_{t' ≥ t} γ^{t'−t} r_{t'}^i                       (reward-to-go, the GPOMDP form)
    b_t^{−i} = mean of G_t^j over the other trajectories j ≠ i that are still running at step t
               (0 if there is none)

over n trajectories sampled with π_θ. The baseline of trajectory i never uses trajectory i, so it
does not bias the estimate; with γ = 1 (and episodes that end, as CartPole's 500-step limit
guarantees) ĝ is an unbiased estimate of the gradient of the expected undiscounted return. With
γ < 1 it is the estimator practitioners use (the γ^t factor in front of each term is dropped).
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from fedrl_app.tasks.env_variation import make_env


class PolicyNetwork(nn.Module):
    """π_θ(a|s) = softmax(f_θ(s)): a two-hidden-layer tanh MLP returning action logits.

    `evaluate_policy` (greedy evaluation) takes the argmax of these logits.
    """

    def __init__(self, obs_dim: int, n_actions: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, n_actions)
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


@dataclass
class Trajectory:
    """One episode: observations, actions taken, rewards received (same length T)."""

    obs: np.ndarray      # (T, obs_dim) float32
    actions: np.ndarray  # (T,) int64
    rewards: np.ndarray  # (T,) float32

    @property
    def undiscounted_return(self) -> float:
        return float(self.rewards.sum())


@dataclass
class GradientEstimate:
    """What one client computed in one round."""

    gradient: dict[str, np.ndarray]  # same keys, shapes and dtypes as the policy's state_dict; ascent direction
    returns: list[float]             # undiscounted return of each sampled episode
    lengths: list[int]
    env_steps: int

    @property
    def trajectories(self) -> int:
        return len(self.returns)

    @property
    def norm(self) -> float:
        return flat_norm(self.gradient)


def flat_norm(arrays: dict[str, np.ndarray]) -> float:
    """‖v‖₂ of a dict of arrays seen as one vector (float64)."""
    return float(np.sqrt(sum(float(np.sum(np.square(a.astype(np.float64)))) for a in arrays.values())))


def rewards_to_go(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """G_t = r_t + γ G_{t+1}, G_T = 0 (float64)."""
    out = np.zeros(len(rewards), np.float64)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = float(rewards[t]) + gamma * running
        out[t] = running
    return out


def leave_one_out_baselines(returns_to_go: list[np.ndarray]) -> list[np.ndarray]:
    """b_t^{−i}: mean of G_t^j over trajectories j ≠ i still running at step t (0 if none)."""
    horizon = max(len(g) for g in returns_to_go)
    total, count = np.zeros(horizon), np.zeros(horizon)
    for g in returns_to_go:
        total[: len(g)] += g
        count[: len(g)] += 1
    out = []
    for g in returns_to_go:
        others = count[: len(g)] - 1
        out.append(np.divide(total[: len(g)] - g, others, out=np.zeros(len(g)), where=others > 0))
    return out


def policy_gradient(policy: nn.Module, trajectories: list[Trajectory], gamma: float) -> dict[str, np.ndarray]:
    """ĝ(θ) for `trajectories` sampled from `policy` (formula in the module docstring)."""
    if not trajectories:
        raise ValueError("policy_gradient needs at least one trajectory")
    rtg = [rewards_to_go(tr.rewards, gamma) for tr in trajectories]
    advantages = [g - b for g, b in zip(rtg, leave_one_out_baselines(rtg))]
    obs = torch.as_tensor(np.concatenate([tr.obs for tr in trajectories]), dtype=torch.float32)
    actions = torch.as_tensor(np.concatenate([tr.actions for tr in trajectories]), dtype=torch.int64)
    adv = torch.as_tensor(np.concatenate(advantages), dtype=torch.float32)
    log_probs = torch.log_softmax(policy(obs), dim=1).gather(1, actions.unsqueeze(1)).squeeze(1)
    surrogate = (log_probs * adv).sum() / len(trajectories)  # its gradient is ĝ
    policy.zero_grad(set_to_none=True)
    surrogate.backward()
    names = dict(policy.named_parameters())
    grads = {}
    for key, value in policy.state_dict().items():
        param = names.get(key)
        grad = param.grad if param is not None and param.grad is not None else torch.zeros_like(value)
        grads[key] = grad.detach().numpy().astype(value.numpy().dtype, copy=True)
    policy.zero_grad(set_to_none=True)
    return grads


@torch.no_grad()
def sample_trajectories(policy: nn.Module, env: gym.Env, episodes: int, rng: np.random.Generator) -> list[Trajectory]:
    """`episodes` full episodes acting a ~ π_θ(·|s); resets are seeded from `rng`."""
    out = []
    for _ in range(episodes):
        obs, _ = env.reset(seed=int(rng.integers(2**31 - 1)))
        observations, actions, rewards = [], [], []
        done = False
        while not done:
            logits = policy(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0))[0].double()
            probs = torch.softmax(logits, 0).numpy()
            action = int(rng.choice(len(probs), p=probs / probs.sum()))
            next_obs, reward, terminated, truncated, _ = env.step(action)
            observations.append(np.asarray(obs, np.float32))
            actions.append(action)
            rewards.append(float(reward))
            obs, done = next_obs, terminated or truncated
        out.append(Trajectory(np.stack(observations), np.asarray(actions, np.int64), np.asarray(rewards, np.float32)))
    return out


_ENVS: dict[tuple, gym.Env] = {}  # one environment per task and dynamics; every episode is reset with a seed


def estimate_gradient(policy: nn.Module, task: str, episodes: int, gamma: float, seed: int,
                      env_params: dict[str, float] | None = None) -> GradientEstimate:
    """Sample `episodes` trajectories of `policy` on the task's environment (dynamics `env_params`,
    nominal if None) and estimate ∇J(θ). Seeded."""
    key = (task, tuple(sorted((env_params or {}).items())))
    env = _ENVS.get(key)
    if env is None:
        env = _ENVS[key] = make_env(task, env_params)
    trajectories = sample_trajectories(policy, env, episodes, np.random.default_rng(seed))
    return GradientEstimate(
        gradient=policy_gradient(policy, trajectories, gamma),
        returns=[tr.undiscounted_return for tr in trajectories],
        lengths=[len(tr.rewards) for tr in trajectories],
        env_steps=sum(len(tr.rewards) for tr in trajectories),
    )
