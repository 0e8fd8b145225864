"""DQN family: targets (DQN vs Double), dueling heads, target updates, replay ring, FLOPs, persistence."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fedrl_app.agents.dqn import DQNAgent, DQNConfig, QNetwork, ReplayBuffer, td_targets


class Fixed(nn.Module):
    """A 'network' returning fixed Q-values, to check target arithmetic by hand."""

    def __init__(self, q):
        super().__init__()
        self.q = torch.tensor(q, dtype=torch.float32)

    def forward(self, x):
        return self.q.expand(len(x), -1)


def test_dqn_and_double_dqn_targets_by_hand():
    online, target = Fixed([[1.0, 5.0, 2.0]]), Fixed([[4.0, 0.5, 3.0]])
    r, s2, done = torch.tensor([1.0, 1.0]), torch.zeros(2, 4), torch.tensor([0.0, 1.0])
    # DQN: max_a Q_target = 4.0; Double: a* = argmax Q_online = 1 -> Q_target = 0.5
    torch.testing.assert_close(td_targets(online, target, r, s2, done, 0.9, double=False), torch.tensor([1 + 0.9 * 4.0, 1.0]))
    torch.testing.assert_close(td_targets(online, target, r, s2, done, 0.9, double=True), torch.tensor([1 + 0.9 * 0.5, 1.0]))


def test_dueling_head_is_value_plus_centred_advantage():
    net = QNetwork(3, 4, 8, dueling=True)
    x = torch.randn(5, 3)
    h = net.body(x)
    q = net(x)
    torch.testing.assert_close(q.mean(dim=1, keepdim=True), net.value(h))  # mean advantage is 0
    a = net.advantage(h)
    torch.testing.assert_close(q - q.mean(1, keepdim=True), a - a.mean(1, keepdim=True))


def test_hard_and_soft_target_updates():
    agent = DQNAgent(4, 2, DQNConfig(hidden=8, target_update_every=2, learning_starts=0, batch_size=4))
    for _ in range(8):
        agent.buffer.add(np.ones(4), 1, 1.0, np.zeros(4), False)
    same = lambda: all(torch.equal(a, b) for a, b in zip(agent.q.parameters(), agent.target.parameters()))
    agent.train_step()
    assert not same()
    agent.train_step()
    assert same()
    soft = DQNAgent(4, 2, DQNConfig(hidden=8, tau=0.25))
    with torch.no_grad():
        for p in soft.q.parameters():
            p.add_(1.0)
    before = [t.clone() for t in soft.target.parameters()]
    soft.update_target()
    for t, b in zip(soft.target.parameters(), before):
        torch.testing.assert_close(t, b + 0.25)


def test_replay_buffer_is_a_ring():
    buf = ReplayBuffer(3, 2)
    for i in range(5):
        buf.add(np.full(2, i), i, float(i), np.full(2, i + 1), i == 4)
    assert buf.size == 3 and buf.pos == 2
    assert sorted(buf.actions.tolist()) == [2, 3, 4] and buf.dones.tolist() == [0.0, 1.0, 0.0]


def _episode_buffer(capacity: int) -> ReplayBuffer:
    """Two episodes in order: states 0→1→2→3 (terminates at 3), then a reset to 10 → 11 → 12 (truncated)."""
    buf = ReplayBuffer(capacity, 1)
    for s, r, s2, term in [(0, 1.0, 1, False), (1, 2.0, 2, False), (2, 4.0, 3, True),
                           (10, 8.0, 11, False), (11, 16.0, 12, False)]:
        buf.add(np.array([s]), s, r, np.array([s2]), term)
    return buf


def _n_step_by_start(buf: ReplayBuffer, n: int, gamma: float) -> dict:
    """Every distinct sampled transition, keyed by its start state: (return, next state, done, discount)."""
    out = {}
    obs, _, ret, nxt, done, disc = buf.sample_n_step(256, n, gamma)
    for o, r, s2, d, g in zip(obs[:, 0].tolist(), ret.tolist(), nxt[:, 0].tolist(), done.tolist(), disc.tolist()):
        out[int(o)] = (r, int(s2), d, g)
    return out


def test_n_step_returns_stop_at_termination_truncation_and_the_newest_transition():
    g = 0.5
    got = _n_step_by_start(_episode_buffer(8), n=3, gamma=g)
    assert got[0] == pytest.approx((1 + g * 2 + g**2 * 4, 3, 1.0, g**3))  # three steps, ends terminal
    assert got[1] == pytest.approx((2 + g * 4, 3, 1.0, g**2))             # terminal after two
    assert got[2] == pytest.approx((4.0, 3, 1.0, g))                      # terminal at once
    assert got[10] == pytest.approx((8 + g * 16, 12, 0.0, g**2))          # the newest transition ends the chain
    assert got[11] == pytest.approx((16.0, 12, 0.0, g))


def test_n_step_chain_stops_at_the_ring_write_head_and_at_a_discontinuity():
    # a cycle 0 → 1 → 2 → 0 → 1 in a ring of 3: the newest transition (0 → 1, r = 8) overwrote slot 0, and
    # the oldest (slot 1) starts from state 1, its next state: continuous by state, but older in time
    buf = ReplayBuffer(3, 1)
    for s, r, s2 in [(0, 1.0, 1), (1, 2.0, 2), (2, 4.0, 0), (0, 8.0, 1)]:
        buf.add(np.array([s]), 0, r, np.array([s2]), False)
    got = _n_step_by_start(buf, n=3, gamma=0.5)
    assert got[0] == pytest.approx((8.0, 1, 0.0, 0.5))                  # newest: not extended into the oldest
    assert got[1] == pytest.approx((2 + 0.5 * 4 + 0.25 * 8, 1, 0.0, 0.125))  # oldest → … → newest: 3 steps
    assert got[2] == pytest.approx((4 + 0.5 * 8, 1, 0.0, 0.25))         # stops at the write head after 2
    # a transition whose successor slot holds another client's state is not extended
    broken = ReplayBuffer(4, 1)
    broken.add(np.array([0]), 0, 1.0, np.array([1]), False)
    broken.add(np.array([7]), 0, 2.0, np.array([8]), False)
    assert _n_step_by_start(broken, n=3, gamma=0.5)[0] == pytest.approx((1.0, 1, 0.0, 0.5))


def test_one_step_config_samples_exactly_as_before():
    def losses(n_step):
        agent = DQNAgent(1, 2, DQNConfig(hidden=8, learning_starts=0, batch_size=4, n_step=n_step), seed=3)
        for s in range(6):
            agent.buffer.add(np.array([s]), s % 2, float(s), np.array([s + 1]), False)
        return [agent.train_step() for _ in range(3)]
    assert losses(1) != losses(3)  # n-step targets differ on a continuous episode
    agent = DQNAgent(1, 2, DQNConfig(hidden=8, batch_size=4), seed=3)
    for s in range(6):
        agent.buffer.add(np.array([s]), 0, float(s), np.array([s + 1]), False)
    a = agent.buffer.sample(4)
    agent.buffer.rng = np.random.default_rng(3)
    b = agent.buffer.sample_n_step(4, 1, 0.99)
    for x, y in zip(a, b[:5]):
        assert torch.equal(x, y)
    assert torch.equal(b[5], torch.full((4,), 0.99))


def test_flop_counter_totals_on_a_tiny_net():
    agent = DQNAgent(4, 2, DQNConfig(hidden=8, epsilon_start=0.0, epsilon_end=0.0, learning_starts=0, batch_size=5))
    forward = 2 * (4 * 8 + 8 * 8 + 8 * 2)  # 2·in·out per linear layer, batch 1
    for _ in range(3):
        agent.act(np.zeros(4, np.float32))
    assert agent.act_flops == 3 * forward
    for _ in range(6):
        agent.buffer.add(np.ones(4), 0, 1.0, np.ones(4), False)
    agent.train_step()
    with FlopCounterMode(display=False) as counter:  # independent count of the same step
        obs = torch.ones(5, 4)
        loss = agent._loss(obs, torch.zeros(5, dtype=torch.long), torch.ones(5), obs, torch.zeros(5), 0.99)
        loss.backward()
    assert agent.train_flops == counter.get_total_flops() > 3 * 5 * forward  # ≥ online+target fwd, + backward


def test_persistence_continues_identically():
    cfg = DQNConfig(hidden=16, learning_starts=4, train_frequency=1, batch_size=4, buffer_size=32)
    agent = DQNAgent(3, 2, cfg, seed=1)
    rng = np.random.default_rng(0)
    for _ in range(10):
        agent.observe(rng.random(3), int(rng.integers(2)), float(rng.random()), rng.random(3), False)
    clone = DQNAgent.from_bytes(agent.to_bytes(), seed=1)
    probe = torch.rand(6, 3)
    assert torch.equal(agent.q(probe), clone.q(probe)) and torch.equal(agent.target(probe), clone.target(probe))
    assert (clone.env_steps, clone.gradient_steps, clone.buffer.size, clone.train_flops) == (
        agent.env_steps, agent.gradient_steps, agent.buffer.size, agent.train_flops)
    assert clone.epsilon == pytest.approx(agent.epsilon)


def test_agent_names():
    assert DQNConfig.for_agent("double-dueling").double and DQNConfig.for_agent("double-dueling").dueling
    assert not DQNConfig.for_agent("dqn").double
    with pytest.raises(ValueError, match="allowed values"):
        DQNConfig.for_agent("rainbow")
