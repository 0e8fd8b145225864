"""Fusion: trust weights and their fallback, the diversity filter, the experience codec, aggregation."""

import gzip

import numpy as np
import pytest
from flwr.app import ConfigRecord

from fedrl_app.agents.dqn import DQNConfig
from fedrl_app.protocol.experience import ExperienceError, pack_experience, unpack_experience
from strategies import Fusion
from strategies.fusion import diversity_admit, trust_weights
from tests.helpers import FakeGrid, arrays, reply


def test_trust_weights_exact():
    g = np.array([1.0, 0.0])
    w, fell_back = trust_weights(g, [np.array([1.0, 0.0]), np.array([1.0, 1.0]), np.array([-1.0, 0.0])])
    cos = np.array([1.0, 1 / np.sqrt(2), 0.0])  # the opposite client gets max(0, −1) = 0
    np.testing.assert_allclose(w, cos / cos.sum())
    assert not fell_back


def test_trust_weights_fall_back_to_a_plain_mean():
    w, fell_back = trust_weights(np.array([1.0, 0.0]), [np.array([-1.0, 0.0]), np.array([0.0, 1.0])])
    np.testing.assert_allclose(w, [0.5, 0.5])
    assert fell_back


def test_diversity_filter_accepts_and_rejects_by_distance():
    rng = np.random.default_rng(0)
    buffer = np.zeros((10, 2))
    assert not diversity_admit(np.array([0.1, 0.0]), buffer, k=4, threshold=0.15, rng=rng)
    assert diversity_admit(np.array([0.2, 0.0]), buffer, k=4, threshold=0.15, rng=rng)
    assert diversity_admit(np.array([0.0, 0.0]), np.zeros((0, 2)), k=4, threshold=0.15, rng=rng)  # empty buffer


def _batch(n=5, d=3):
    rng = np.random.default_rng(1)
    return rng.normal(size=(n, d)), rng.integers(0, 2, n), rng.normal(size=n), rng.normal(size=(n, d)), rng.integers(0, 2, n)


def test_experience_round_trip_and_gzip_saving():
    obs, a, r, o2, d = _batch()
    record, raw_bytes = pack_experience(obs, a, r, o2, d)
    assert raw_bytes == 5 * (2 * 3 + 3) * 4
    out = unpack_experience(record, obs_dim=3, n_actions=2)
    for got, want in zip(out, (obs, a, r, o2, d)):
        np.testing.assert_allclose(got, np.asarray(want, np.float32))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda rec: rec.__setitem__("rows", 6), "inflates to more or less"),
        (lambda rec: rec.__setitem__("gz", b"not gzip"), "not valid gzip"),
        (lambda rec: rec.__setitem__("gz", gzip.compress(b"\0" * 10_000_000)), "inflates to more or less"),
        (lambda rec: rec.__setitem__("rows", -1), "'rows' must be an int"),
    ],
)
def test_experience_refuses_bad_payloads(mutate, message):
    record, _ = pack_experience(*_batch())
    mutate(record)
    with pytest.raises(ExperienceError, match=message):
        unpack_experience(record, obs_dim=3, n_actions=2)


def test_experience_refuses_bad_actions_and_nan():
    obs, a, r, o2, d = _batch()
    with pytest.raises(ExperienceError, match="actions must be integers"):
        unpack_experience(pack_experience(obs, a + 5, r, o2, d)[0], 3, 2)
    r[0] = np.nan
    with pytest.raises(ExperienceError, match="NaN"):
        unpack_experience(pack_experience(obs, a, r, o2, d)[0], 3, 2)


def _fusion(**kw):
    cfg = DQNConfig(hidden=4, batch_size=2)
    return Fusion(obs_dim=3, n_actions=2, agent_config=cfg, server_updates=0, **kw)


def _model(scale, fusion):
    return {k: (np.ones_like(v.detach().numpy()) * scale) for k, v in fusion.learner.q.state_dict().items()}


def test_fusion_aggregates_trust_weighted_and_admits_experience():
    s = _fusion(mix=0.5, diversity_filter=False)
    g = _model(1.0, s)
    list(s.configure_train(1, arrays(**g), ConfigRecord({}), FakeGrid([1, 2])))
    exp = pack_experience(*_batch())[0]
    replies = [reply(1, arrays(**_model(3.0, s)), 10, extra={"experience": exp}),
               reply(2, arrays(**_model(-2.0, s)), 10, extra={"experience": exp})]
    out, _ = s.aggregate_train(1, replies)
    # client 2 points away from the global network: weight 0; θ = 0.5·1 + 0.5·3 = 2
    for v in out.values():
        np.testing.assert_allclose(v.numpy(), 2.0)
    extra = s.rounds[1].extra
    assert extra["trust-weights"] == [1.0, 0.0] and extra["experience-admitted"] == 10 and extra["global-buffer-size"] == 10


def test_fusion_drops_a_reply_without_valid_experience():
    s = _fusion()
    g = _model(1.0, s)
    list(s.configure_train(1, arrays(**g), ConfigRecord({}), FakeGrid([1, 2])))
    bad = pack_experience(*_batch())[0]
    bad["rows"] = 99
    out, _ = s.aggregate_train(1, [reply(1, arrays(**g), 10, extra={"experience": bad}), reply(2, arrays(**g), 10)])
    assert out is None
    reasons = dict(s.rounds[1].dropped)
    assert "experience" in reasons[1] and "no 'experience'" in reasons[2]


def test_server_buffer_size_sets_the_global_buffer_and_keeps_the_newest():
    from fedrl_app.config import ConfigError, RunConfig
    from fedrl_app.server.registry import build_strategy

    cfg = RunConfig.from_run_config({"task": "cartpole", "strategy": "fusion", "agent": "double",
                                     "server-buffer-size": 12})
    s = build_strategy(cfg)
    assert s.learner.buffer.capacity == 12 and s.learner.config.double
    g = _model(1.0, s)
    list(s.configure_train(1, arrays(**g), ConfigRecord({}), FakeGrid([1, 2])))
    obs, actions, rewards, next_obs, dones = _batch(n=10, d=4)  # CartPole: 4 observations, 2 actions
    exp = pack_experience(obs, actions, rewards, next_obs, dones)[0]
    s.diversity_filter = False
    s.aggregate_train(1, [reply(n, arrays(**g), 10, extra={"experience": exp}) for n in (1, 2)])
    # 20 offered into 12 slots: the ring keeps the newest 12, rows 8..9 of client 1 and all of client 2
    assert s.learner.buffer.size == 12 and s.rounds[1].extra["experience-admitted"] == 20
    np.testing.assert_allclose(np.sort(s.learner.buffer.rewards[:12]),
                               np.sort(np.concatenate([rewards[8:], rewards]).astype(np.float32)))
    with pytest.raises(ConfigError, match="server-buffer-size"):
        RunConfig.from_run_config({"server-buffer-size": 0})
