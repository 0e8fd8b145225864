"""REINFORCE estimator: rewards-to-go, leave-one-out baselines, exact and expected gradients on a bandit."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from fedrl_app.agents.policy_gradient import (
    PolicyNetwork,
    Trajectory,
    estimate_gradient,
    leave_one_out_baselines,
    policy_gradient,
    rewards_to_go,
    sample_trajectories,
)


class Logits(nn.Module):
    """π(a) = softmax(z), whatever the observation: ∇_z log π(a) = e_a − π."""

    def __init__(self, z):
        super().__init__()
        self.z = nn.Parameter(torch.tensor(z, dtype=torch.float32))

    def forward(self, obs):
        return self.z.expand(len(obs), -1)


class Bandit(gym.Env):
    """One step; action 0 pays 1, action 1 pays 0."""

    observation_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), float(action == 0), True, False, {}


def _bandit_trajectory(action):
    return Trajectory(np.zeros((1, 1), np.float32), np.array([action]), np.array([float(action == 0)], np.float32))


def test_rewards_to_go_and_leave_one_out_baselines_exact():
    np.testing.assert_allclose(rewards_to_go(np.array([1.0, 2.0, 4.0]), 0.5), [1 + 0.5 * 2 + 0.25 * 4, 2 + 0.5 * 4, 4])
    b = leave_one_out_baselines([np.array([3.0, 2.0, 1.0]), np.array([5.0]), np.array([7.0, 1.0])])
    np.testing.assert_allclose(b[0], [(5 + 7) / 2, 1.0, 0.0])  # t=1: only the third is still running; t=2: none
    np.testing.assert_allclose(b[1], [(3 + 7) / 2])
    np.testing.assert_allclose(b[2], [(3 + 5) / 2, 2.0])


def test_bandit_gradient_by_hand():
    # π = (1/2, 1/2). Trajectory a=0 (G=1, b=0): (e_0 − π)·1 = (1/2, −1/2); a=1 (G=0, b=1): (e_1 − π)·(−1) = (1/2, −1/2)
    grad = policy_gradient(Logits([0.0, 0.0]), [_bandit_trajectory(0), _bandit_trajectory(1)], gamma=0.99)
    np.testing.assert_allclose(grad["z"], [0.5, -0.5], atol=1e-7)
    # one trajectory: no baseline; a=1 paid 0, so the estimate is 0
    np.testing.assert_allclose(policy_gradient(Logits([0.0, 0.0]), [_bandit_trajectory(1)], 0.99)["z"], [0, 0])


def test_equal_returns_give_an_exactly_zero_gradient():
    # every trajectory paid the same, so each leave-one-out baseline equals its own return: no signal
    grad = policy_gradient(Logits([0.3, -0.2]), [_bandit_trajectory(0), _bandit_trajectory(0)], gamma=0.99)
    np.testing.assert_array_equal(grad["z"], [0.0, 0.0])


def test_bandit_estimate_is_unbiased():
    # ∇_z E[r] = π_i (r_i − Σ_j π_j r_j); with z = (0, ln 3): π = (1/4, 3/4), ∇ = (3/16, −3/16)
    policy = Logits([0.0, float(np.log(3.0))])
    trajectories = sample_trajectories(policy, Bandit(), 4000, np.random.default_rng(0))
    assert abs(np.mean([t.actions[0] == 0 for t in trajectories]) - 0.25) < 0.03
    grad = policy_gradient(policy, trajectories, gamma=1.0)["z"]
    np.testing.assert_allclose(grad, [3 / 16, -3 / 16], atol=0.02)
    assert grad[0] > 0 > grad[1]  # push probability towards the paying arm


def test_cartpole_estimate_matches_state_dict_and_is_seeded():
    torch.manual_seed(0)
    policy = PolicyNetwork(4, 2, 8)
    a = estimate_gradient(policy, "cartpole", 3, 0.99, seed=7)
    b = estimate_gradient(policy, "cartpole", 3, 0.99, seed=7)
    spec = {k: (tuple(v.shape), v.numpy().dtype) for k, v in policy.state_dict().items()}
    assert {k: (v.shape, v.dtype) for k, v in a.gradient.items()} == spec
    assert all(np.array_equal(a.gradient[k], b.gradient[k]) for k in spec) and a.returns == b.returns
    assert a.trajectories == 3 and a.env_steps == sum(a.lengths) and a.returns == [float(n) for n in a.lengths]
    assert a.norm > 0
    assert all(p.grad is None for p in policy.parameters())  # the policy is left clean


@pytest.mark.parametrize("gamma", [0.5, 1.0])
def test_surrogate_matches_explicit_sum(gamma):
    # ĝ = (1/n) Σ_i Σ_t ∇log π(a_t) (G_t − b_t): compare with a hand loop over a 2-step, 2-action case
    policy = Logits([0.3, -0.2])
    trajs = [Trajectory(np.zeros((2, 1), np.float32), np.array([0, 1]), np.array([1.0, 2.0], np.float32)),
             Trajectory(np.zeros((1, 1), np.float32), np.array([1]), np.array([3.0], np.float32))]
    pi = torch.softmax(torch.tensor([0.3, -0.2]), 0).numpy()
    score = lambda a: np.eye(2)[a] - pi  # noqa: E731
    g0 = [1 + gamma * 2, 2.0]
    expected = (score(0) * (g0[0] - 3.0) + score(1) * (g0[1] - 0.0) + score(1) * (3.0 - g0[0])) / 2
    np.testing.assert_allclose(policy_gradient(policy, trajs, gamma)["z"], expected, rtol=1e-5)
