"""Fusion: trust weights and their fallback, the diversity filter, the experience codec, aggregation."""

import gzip

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord

from fedrl_app.agents.dqn import DQNConfig
from fedrl_app.protocol.experience import ExperienceError, pack_experience, unpack_experience
from strategies import Fusion
from strategies.fusion import (
    StateNormaliser,
    diversity_admit,
    gate_weights,
    nearest_distances,
    nearest_index,
    nearest_spacing,
    normalise_weights,
    network_td_error,
    outlier_batches,
    td_trust_factors,
    trust_weights,
    update_trust,
)
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


def test_nearest_distances_and_spacing_exact():
    line = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [6.0, 0.0]])
    np.testing.assert_allclose(nearest_distances(np.array([[1.0, 0.0], [3.0, 4.0]]), line), [0.0, 4.0])
    # each row's nearest *other* row: 1, 1, 2, 3; their median is 1.5 (all four sampled)
    np.testing.assert_allclose(nearest_distances(line, line, skip_self=True), [1.0, 1.0, 2.0, 3.0])
    fitted = nearest_index(line)  # a fitted index answers exactly as the rows do
    np.testing.assert_allclose(nearest_distances(line, fitted, skip_self=True), [1.0, 1.0, 2.0, 3.0])
    assert nearest_spacing(line, np.random.default_rng(0), sample=4, index=fitted) == 1.5
    assert nearest_spacing(line, np.random.default_rng(0), sample=4) == 1.5
    many = np.random.default_rng(1).normal(size=(700, 3))  # more states than one 256-row chunk
    brute = np.linalg.norm(many[:, None] - many[None], axis=2)
    np.fill_diagonal(brute, np.inf)
    np.testing.assert_allclose(nearest_distances(many, many, skip_self=True), brute.min(axis=1), rtol=1e-5)


def test_nearest_filter_refuses_repeats_and_duplicates_within_a_round():
    s = _fusion(mix=0.5, diversity_measure="nearest", diversity_space="raw", diversity_threshold=0.5)
    grid = np.array([[x, y, 0.0] for x in range(20) for y in range(20)], dtype=float)  # spacing exactly 1
    for o in grid:
        s.learner.buffer.add(o, 0, 0.0, o, False)
    g = _model(1.0, s)
    list(s.configure_train(1, arrays(**g), ConfigRecord({}), FakeGrid([1, 2])))
    # client 1: a repeat of a buffer state, a state 0.3 from one (under 0.5 × spacing), a new state 0.7 away;
    # client 2: the same new state again (refused: admitted earlier this round) and a far one
    obs1 = np.array([[3.0, 4.0, 0.0], [3.3, 4.0, 0.0], [5.0, 5.0, 0.7]])
    obs2 = np.array([[5.0, 5.0, 0.7], [40.0, 0.0, 0.0]])
    packed = [pack_experience(o, np.zeros(len(o)), np.zeros(len(o)), o, np.zeros(len(o)))[0] for o in (obs1, obs2)]
    s.aggregate_train(1, [reply(n, arrays(**_model(2.0, s)), 10, extra={"experience": e})
                          for n, e in zip((1, 2), packed)])
    extra = s.rounds[1].extra
    assert extra["experience-offered"] == 5 and extra["experience-admitted"] == 2
    np.testing.assert_allclose(s.learner.buffer.obs[400:402], [[5.0, 5.0, 0.7], [40.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="diversity_measure"):
        _fusion(diversity_measure="closest")


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
    s = _fusion(mix=0.5, diversity_filter=False, trust="param-cosine")
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


def test_update_trust_exact():
    # Δ = (2, 0), (1, 0), (−2, 0): the median (1, 0) points with the first two; the third is refused,
    # and the longer ones are scaled down to the median's norm
    g = np.zeros(2)
    w, scales, sims, fell_back = update_trust(g, [np.array([2.0, 0.0]), np.array([1.0, 0.0]), np.array([-2.0, 0.0])],
                                              clip="median-update", weighting="proportional")
    np.testing.assert_allclose(sims, [1.0, 1.0, -1.0])
    np.testing.assert_allclose(w, [0.5, 0.5, 0.0])
    np.testing.assert_allclose(scales, [0.5, 1.0, 0.5])
    assert not fell_back
    # param-cosine cannot tell them apart once the global network is large: every θ_k ≈ θ_global
    w_param, _ = trust_weights(g + 100.0, [np.array([102.0, 100.0]), np.array([101.0, 100.0]),
                                           np.array([98.0, 100.0])])
    assert np.all(np.abs(w_param - 1 / 3) < 0.001)


def test_update_trust_median_norm_clip_leaves_the_shorter_half_whole():
    # Δ = (3, 0), (0, 4), (1, 0), (−10, 0): per coordinate the median is (0.5, 0), ‖m‖ = 0.5, while the norms
    # are 3, 4, 1, 10 with median 3.5: "median-update" shrinks all four, "median-norm" only the two longer ones
    g = np.zeros(2)
    clients = [np.array([3.0, 0.0]), np.array([0.0, 4.0]), np.array([1.0, 0.0]), np.array([-10.0, 0.0])]
    _, scales, _, _ = update_trust(g, clients, clip="median-update")
    np.testing.assert_allclose(scales, [0.5 / 3, 0.5 / 4, 0.5, 0.05])
    w, scales, sims, _ = update_trust(g, clients, clip="median-norm", weighting="proportional")
    np.testing.assert_allclose(scales, [1.0, 3.5 / 4, 1.0, 0.35])
    np.testing.assert_allclose(sims, [1.0, 0.0, 1.0, -1.0])  # the weights do not depend on the clip
    np.testing.assert_allclose(w, [0.5, 0.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="clip must be one of"):
        update_trust(g, clients, clip="mean")


def test_gate_weights_exact():
    # median 0.5; ρ = 1.2, 1.2, 1.0, 0.72, 0.4: the first three weigh 1, the fourth (0.72 − 0.5) / 0.25 = 0.88, the last 0
    w, fell_back = gate_weights([0.6, 0.6, 0.5, 0.36, 0.2])
    np.testing.assert_allclose(w, np.array([1.0, 1.0, 1.0, 0.88, 0.0]) / 3.88)
    assert not fell_back
    # proportional weights of the same similarities: the honest-but-different fourth client would get 0.16, not 0.23
    np.testing.assert_allclose(normalise_weights([0.6, 0.6, 0.5, 0.36, 0.2])[0][3], 0.36 / 2.26)


def test_gate_weights_leave_it_to_the_proportional_rule_without_a_majority_direction():
    w, fell_back = gate_weights([0.5, -0.2, -0.3])  # median −0.2 ≤ 0
    np.testing.assert_allclose(w, [1.0, 0.0, 0.0])
    assert not fell_back
    w, fell_back = gate_weights([0.0, 0.0, -0.1])
    assert fell_back and list(w) == pytest.approx([1 / 3] * 3)


def test_update_trust_gate_weighting_uses_the_same_similarities_and_scales():
    g = np.zeros(2)
    clients = [np.array([3.0, 0.0]), np.array([0.0, 4.0]), np.array([1.0, 0.0]), np.array([-10.0, 0.0])]
    w_prop, scales_prop, sims, _ = update_trust(g, clients, weighting="proportional")
    w_gate, scales_gate, sims_gate, _ = update_trust(g, clients, weighting="gate")
    np.testing.assert_allclose(sims_gate, sims)
    np.testing.assert_allclose(scales_gate, scales_prop)
    np.testing.assert_allclose(w_gate, gate_weights(list(sims))[0])
    np.testing.assert_allclose(w_gate, [0.5, 0.0, 0.5, 0.0])  # sims 1, 0, 1, −1: median 0.5
    with pytest.raises(ValueError, match="weighting must be one of"):
        update_trust(g, clients, weighting="softmax")
    with pytest.raises(ValueError, match="trust_weighting must be one of"):
        _fusion(trust_weighting="softmax")


def test_update_trust_falls_back_to_a_plain_mean_when_nobody_agrees():
    w, _, _, fell_back = update_trust(np.zeros(2), [np.array([1.0, 0.0]), np.array([-1.0, 0.0])],
                                      weighting="proportional")
    # the median of two opposite updates is 0: every similarity 0, a plain mean
    assert fell_back and list(w) == [0.5, 0.5]


def test_fusion_update_cosine_mixes_bounded_updates_and_refuses_the_outvoted_clients_experience():
    s = _fusion(mix=0.5, diversity_filter=False)  # trust = update-cosine, gate, median-norm: the defaults
    g = _model(1.0, s)
    list(s.configure_train(1, arrays(**g), ConfigRecord({}), FakeGrid([1, 2, 3])))
    exp = pack_experience(*_batch())[0]
    replies = [reply(n, arrays(**_model(v, s)), 10, extra={"experience": exp})
               for n, v in ((1, 3.0), (2, 2.0), (3, -1.0))]
    out, _ = s.aggregate_train(1, replies)
    # Δ = 2, 1, −2 (every coordinate): median 1, similarities 1, 1, −1, so the gate's ρ = 1, 1, −1 and
    # w = ½, ½, 0; the norms' median is 2's, so nobody is scaled: θ = 1 + 0.5·(½·2 + ½·1) = 1.75
    for v in out.values():
        np.testing.assert_allclose(v.numpy(), 1.75, rtol=1e-6)
    extra = s.rounds[1].extra
    assert extra["trust-weights"] == [0.5, 0.5, 0.0] and extra["trust-partitions"] == [1, 2, 3]
    assert extra["experience-refused-partitions"] == [3] and extra["experience-admitted"] == 10


def test_outlier_batches_needs_a_majority_and_flags_only_the_far_ones():
    assert outlier_batches({0: 1.0, 1: 1.2, 2: 0.9, 3: 10.0}) == {3}
    assert outlier_batches({0: 1.0, 1: 2.9, 2: 1.0}) == set()       # 2.9 < 3 × median 1.0
    assert outlier_batches({0: 1.0, 1: 100.0}) == set()             # two batches: no majority to compare with


def test_normalised_distance_is_about_one_for_typical_pairs_on_any_scale():
    rng = np.random.default_rng(0)
    for scale in (0.01, 1.0, 300.0):
        states = rng.normal(size=(4000, 8)) * scale * np.arange(1, 9)  # per-dimension spreads differ 8×
        z = StateNormaliser(states)(states)
        d = np.linalg.norm(z[:2000] - z[2000:], axis=1)
        assert abs(float(np.mean(d ** 2)) - 1.0) < 0.05


def test_fusion_refuses_a_batch_of_off_distribution_states():
    s = _fusion(mix=0.5, diversity_filter=False)
    rng = np.random.default_rng(3)
    for _ in range(400):  # a buffer of honest states, enough for statistics
        o = rng.normal(size=3)
        s.learner.buffer.add(o, 0, 0.0, o, False)
    g = _model(1.0, s)
    list(s.configure_train(1, arrays(**g), ConfigRecord({}), FakeGrid([1, 2, 3])))
    def honest(seed):
        batch_rng = np.random.default_rng(seed)
        return pack_experience(batch_rng.normal(size=(5, 3)), batch_rng.integers(0, 2, 5), batch_rng.normal(size=5),
                               batch_rng.normal(size=(5, 3)), np.zeros(5))[0]
    obs, a, r, o2, d = _batch(n=20)
    d = np.zeros(20)
    poisoned = pack_experience(rng.uniform(-10, 10, size=obs.shape), a, r, rng.uniform(-10, 10, size=o2.shape), d)[0]
    replies = [reply(1, arrays(**_model(2.0, s)), 10, extra={"experience": honest(1)}),
               reply(2, arrays(**_model(2.1, s)), 10, extra={"experience": honest(2)}),
               reply(3, arrays(**_model(1.9, s)), 10, extra={"experience": poisoned})]
    s.aggregate_train(1, replies)
    extra = s.rounds[1].extra
    assert extra["experience-refused-partitions"] == [3]
    assert extra["experience-offered"] == 30 and extra["experience-admitted"] == 10  # 2 honest batches of 5


def test_network_td_error_is_the_median_of_its_own_bootstrapped_errors():
    net = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))  # Q(s) = (s0, 2·s1)
    obs = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    next_obs = np.array([[0.0, 1.0], [0.0, 0.0], [2.0, 0.0]])
    batch = (obs, np.array([0, 1, 1]), np.array([1.0, 0.0, 0.5]), next_obs, np.array([0.0, 1.0, 0.0]))
    # targets: 1 + 0.5·max(0, 2) = 2; terminal 0; 0.5 + 0.5·max(2, 0) = 1.5.  Q(s, a): 1, 2, 2.
    # |errors| = 1, 2, 0.5 → median 1
    assert network_td_error(net, batch, gamma=0.5) == pytest.approx(1.0)


def test_td_trust_factors_shrink_only_above_the_median():
    np.testing.assert_allclose(td_trust_factors([1.0, 2.0, 4.0]), [1.0, 1.0, 0.5])
    np.testing.assert_allclose(td_trust_factors([3.0, 3.0]), [1.0, 1.0])


def test_fusion_td_probe_down_weights_a_network_that_misfits_the_buffer_and_refuses_its_experience():
    s = _fusion(mix=0.5, diversity_filter=False, td_probe=64)
    for _ in range(300):  # terminal transitions from s = 0 with reward 0: every network's TD error is |Q(0, a)|
        s.learner.buffer.add(np.zeros(3), 0, 0.0, np.zeros(3), True)
    list(s.configure_train(1, arrays(**_model(1.0, s)), ConfigRecord({}), FakeGrid([1, 2, 3])))
    exp = pack_experience(*_batch())[0]
    values = (2.0, 2.1, 5.0)  # every update points the same way: update-cosine alone gives ⅓ each
    replies = [reply(n, arrays(**_model(v, s)), 10, extra={"experience": exp}) for n, v in zip((1, 2, 3), values)]
    s.aggregate_train(1, replies)
    extra = s.rounds[1].extra
    # all-v weights, 3 inputs, 4 hidden, 2 layers: Q(0) = 4v·(4v² + v) + v
    q0 = [16 * v**3 + 4 * v**2 + v for v in values]
    np.testing.assert_allclose(extra["trust-td-errors"], q0, rtol=1e-5)
    factors = [1.0, 1.0, q0[1] / q0[2]]
    np.testing.assert_allclose(extra["trust-td-factors"], factors, rtol=1e-5)
    np.testing.assert_allclose(extra["trust-weights"], np.array(factors) / sum(factors), rtol=1e-5)
    assert extra["experience-refused-partitions"] == [3]  # 2105 > 3 × the median 167.9


def test_fusion_td_probe_waits_for_a_buffer_to_score_on():
    s = _fusion(mix=0.5, diversity_filter=False, td_probe=64)
    list(s.configure_train(1, arrays(**_model(1.0, s)), ConfigRecord({}), FakeGrid([1, 2, 3])))
    exp = pack_experience(*_batch())[0]
    s.aggregate_train(1, [reply(n, arrays(**_model(v, s)), 10, extra={"experience": exp})
                          for n, v in ((1, 2.0), (2, 2.1), (3, 5.0))])
    assert "trust-td-errors" not in s.rounds[1].extra
    np.testing.assert_allclose(s.rounds[1].extra["trust-weights"], [1 / 3] * 3)


@pytest.mark.parametrize(("restart", "adam_steps"), [(True, 2), (False, 4)])
def test_fusion_learner_restart_starts_each_round_from_the_mix(restart, adam_steps):
    s = Fusion(obs_dim=3, n_actions=2, agent_config=DQNConfig(hidden=4, batch_size=2), server_updates=2,
               diversity_filter=False, mix=0.5, learner_restart=restart)
    exp = pack_experience(*_batch())[0]
    for server_round in (1, 2):
        g = _model(1.0, s)
        list(s.configure_train(server_round, arrays(**g), ConfigRecord({}), FakeGrid([1, 2, 3])))
        replies = [reply(n, arrays(**_model(v, s)), 10, extra={"experience": exp})
                   for n, v in ((1, 3.0), (2, 2.0), (3, -1.0))]
        s.aggregate_train(server_round, replies)
    target = {k: v.detach().numpy() for k, v in s.learner.target.state_dict().items()}
    # the mix is 1.75 everywhere (see the update-cosine test); 2 server steps < 250 leave a restarted target there
    assert all(np.allclose(v, 1.75) for v in target.values()) == restart
    steps = {int(st["step"]) for st in s.learner.optimizer.state.values()}
    assert steps == {adam_steps}


@pytest.mark.parametrize("deploy", ["learner", "average"])
def test_fusion_deploys_the_mix_before_the_learner_steps_or_the_learners_network(deploy):
    s = Fusion(obs_dim=3, n_actions=2, agent_config=DQNConfig(hidden=4, batch_size=2), server_updates=2,
               diversity_filter=False, mix=0.5, deploy=deploy)
    g = _model(1.0, s)
    before = arrays(**g)
    assert s.deployed_arrays(before) is before  # nothing aggregated yet: the initial model
    list(s.configure_train(1, before, ConfigRecord({}), FakeGrid([1, 2, 3])))
    exp = pack_experience(*_batch())[0]
    sent, _ = s.aggregate_train(1, [reply(n, arrays(**_model(v, s)), 10, extra={"experience": exp})
                                    for n, v in ((1, 3.0), (2, 2.0), (3, -1.0))])
    deployed = s.deployed_arrays(sent)
    # the mix is 1.75 everywhere (see the update-cosine test); the learner's 2 Adam steps moved the sent network
    assert not all(np.allclose(v.numpy(), 1.75) for v in sent.values())
    if deploy == "learner":
        assert deployed is sent
    else:
        assert all(np.allclose(v.numpy(), 1.75) for v in deployed.values())


def test_fusion_refuses_an_unknown_deploy():
    with pytest.raises(ValueError, match="deploy must be one of"):
        _fusion(deploy="best")
