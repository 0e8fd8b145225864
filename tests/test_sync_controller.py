"""The DQN sync controller: schedule, target network, learning, persistence, state features."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from fedrl_app.agents.sync_controller import (
    FULL,
    LOWER_COMPRESSION,
    RAISE_COMPRESSION,
    SKIP,
    ControllerConfig,
    SyncController,
    divergence,
)

CFG = ControllerConfig()


def test_epsilon_decays_linearly_then_stays():
    c = SyncController(replace(CFG, epsilon_start=1.0, epsilon_end=0.1, epsilon_decay_rounds=10))
    seen = []
    for _ in range(12):
        seen.append(c.epsilon)
        c.act([0.0] * 5)
    assert seen[0] == 1.0 and seen[5] == pytest.approx(0.55) and seen[10] == pytest.approx(0.1) and seen[11] == pytest.approx(0.1)


def test_greedy_acting_does_not_advance_exploration():
    c = SyncController()
    c.act([0.0] * 5, greedy=True)
    assert c.decisions == 0


def test_target_network_is_a_hard_copy_every_n_steps():
    c = SyncController(replace(CFG, updates_per_round=1, target_update_every=3))
    c.remember([0.1] * 5, FULL, 1.0, [0.2] * 5)
    same = lambda: all(torch.equal(a, b) for a, b in zip(c.q.state_dict().values(), c.target.state_dict().values()))
    assert same()
    c.learn()
    c.learn()
    assert not same(), "target must lag the online network between copies"
    c.learn()
    assert same(), "target must equal the online network after target_update_every steps"


def test_learns_a_contextual_bandit():
    # reward 1 for SKIP when the first feature is high, 1 for FULL when it is low; nothing else pays
    c = SyncController(replace(CFG, gamma=0.0, updates_per_round=50, learning_rate=5e-3), seed=3)
    rng = np.random.default_rng(0)
    for _ in range(400):
        x = float(rng.random())
        state = [x, 0.5, 0.0, 0.5, 0.5]
        action = int(rng.integers(5))
        c.remember(state, action, float(action == (SKIP if x > 0.5 else FULL)), state)
    for _ in range(10):
        c.learn()
    assert c.act([0.9, 0.5, 0.0, 0.5, 0.5], greedy=True) == SKIP
    assert c.act([0.1, 0.5, 0.0, 0.5, 0.5], greedy=True) == FULL


def test_reward_is_accuracy_gain_minus_byte_cost():
    c = SyncController(replace(CFG, bytes_penalty=0.2))
    assert c.reward(0.90, 0.95, 0.5) == pytest.approx(0.05 - 0.1)
    assert c.reward(0.90, 0.90, 0.0) == 0.0


def test_rate_actions_stay_in_bounds():
    c = SyncController(replace(CFG, initial_rate=0.01, rate_min=0.004, rate_max=0.03, rate_factor=2.0))
    assert c.apply_rate_action(RAISE_COMPRESSION) == pytest.approx(0.005)
    assert c.apply_rate_action(RAISE_COMPRESSION) == pytest.approx(0.004)
    for _ in range(5):
        c.apply_rate_action(LOWER_COMPRESSION)
    assert c.rate == pytest.approx(0.03)
    assert c.encode_state(0.5, 0.5, 20, 0.5)[2:] == [1.0, 0.5, pytest.approx(1.0)]


def test_persistence_round_trip_continues_identically():
    c = SyncController(seed=7)
    for i in range(30):
        c.remember([i / 30] * 5, i % 5, float(i), [0.5] * 5)
        c.act([i / 30] * 5)
    c.learn()
    c.pending = ([0.1] * 5, SKIP, 0.8, 0.0, 0.25, 0.5)
    d = SyncController.from_bytes(c.to_bytes())
    probe = torch.rand(4, 5)
    assert torch.equal(c.q(probe), d.q(probe)) and torch.equal(c.target(probe), d.target(probe))
    assert (d.decisions, d.gradient_steps, d.rate, d.pending) == (c.decisions, c.gradient_steps, c.rate, c.pending)
    assert d.buffer == c.buffer
    assert [c.act([0.3] * 5) for _ in range(5)] == [d.act([0.3] * 5) for _ in range(5)]
    assert c.learn() == pytest.approx(d.learn())


def test_divergence_features():
    u = {"a": np.array([1.0, 0.0]), "b": np.array([2.0])}
    assert divergence(u, u) == pytest.approx(0.0)
    assert divergence(u, {k: -v for k, v in u.items()}) == pytest.approx(1.0)
    assert divergence({"a": np.array([1.0, 0.0])}, {"a": np.array([0.0, 3.0])}) == pytest.approx(0.5)
    assert divergence(u, None) == 0.5


def test_an_untrained_controller_keeps_sending_compressed():
    # the prior: before any learning the greedy action is "compressed" wherever the state is
    from fedrl_app.agents.sync_controller import COMPRESSED

    for seed in range(10):
        c = SyncController(ControllerConfig(), seed=seed)
        rng = np.random.default_rng(seed)
        assert all(c.act(list(rng.random(5)), greedy=True) == COMPRESSED for _ in range(100))
