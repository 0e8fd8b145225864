"""DrlCompress aggregation: any mix of full, compressed and skipped replies gives the right step."""

import numpy as np
import pytest
from flwr.app import ConfigRecord

from fedrl_app.protocol.codecs import CompressionConfig, encode_update
from fedrl_app.protocol.metadata import ClientMetadata, encode_metadata
from strategies import DrlCompress
from tests.helpers import FakeGrid, arrays, reply

X = {"w": np.array([[1.0, 2.0, 3.0, 4.0]], np.float32), "b": np.array([0.5], np.float32)}


def _meta(node, n, decision):
    return encode_metadata(ClientMetadata(partition_id=node, num_examples=n, train_time_s=0.1,
                                          epoch_losses=[0.3], sync_decision=decision, compression_rate=0.5))


def _drl_reply(node, n, decision, delta=None):
    msg = reply(node, arrays(w=[[0.0] * 4], b=[0.0]), n, metadata=_meta(node, n, decision))
    del msg.content["arrays"]
    if decision in ("full", "pace-full"):
        msg.content["delta"] = arrays(**delta)
    elif decision != "skip":
        record, _, _ = encode_update(delta, None, X, CompressionConfig(topk_ratio=0.5, quantize=False))
        msg.content["delta-compressed"] = record
    return msg


def _strategy():
    s = DrlCompress(num_rounds=10)
    msgs = list(s.configure_train(1, arrays(**X), ConfigRecord({}), FakeGrid([1, 2, 3])))
    config = msgs[0].content["config"]
    assert (config["bytes-penalty"], config["num-server-rounds"], config["sync-policy"]) == (0.1, 10, "dqn")
    return s


def test_mixed_full_compressed_skip_renormalises_over_senders():
    s = _strategy()
    full = {"w": np.array([[1.0, 1.0, 1.0, 1.0]], np.float32), "b": np.array([1.0], np.float32)}
    sparse = {"w": np.array([[0.0, 4.0, 0.0, -8.0]], np.float32), "b": np.array([2.0], np.float32)}
    out, _ = s.aggregate_train(1, [_drl_reply(1, 100, "full", full), _drl_reply(2, 300, "compressed", sparse),
                                   _drl_reply(3, 600, "skip")])
    # senders 1 and 2 only: weights 0.25 / 0.75; top-k at 0.5 keeps the two largest entries of w and b
    np.testing.assert_allclose(out["w"].numpy(), X["w"] + 0.25 * full["w"] + 0.75 * np.array([[0, 4, 0, -8]]))
    np.testing.assert_allclose(out["b"].numpy(), X["b"] + 0.25 * 1.0 + 0.75 * 2.0)
    extra = s.rounds[1].extra
    assert (extra["sync-full"], extra["sync-compressed"], extra["sync-skip"], extra["senders"]) == (1, 1, 1, 2)


def test_sent_mean_weighs_each_coordinate_over_the_clients_that_sent_it():
    s = DrlCompress(num_rounds=10, update_aggregation="sent-mean")
    list(s.configure_train(1, arrays(**X), ConfigRecord({}), FakeGrid([1, 2, 3])))
    full = {"w": np.array([[1.0, 0.0, 1.0, 1.0]], np.float32), "b": np.array([1.0], np.float32)}  # its 0 is sent
    sparse = {"w": np.array([[0.0, 4.0, 0.0, -8.0]], np.float32), "b": np.array([2.0], np.float32)}
    out, _ = s.aggregate_train(1, [_drl_reply(1, 100, "full", full), _drl_reply(2, 300, "compressed", sparse),
                                   _drl_reply(3, 600, "skip")])
    # coordinates the top-k reply left out (w0, w2) take the dense client's value whole, not × 0.25;
    # w1: 0.25 · 0 + 0.75 · 4 (the dense client sent a 0); w3, b: both sent, weights 0.25 / 0.75
    np.testing.assert_allclose(out["w"].numpy(), X["w"] + np.array([[1.0, 3.0, 1.0, 0.25 - 6.0]]))
    np.testing.assert_allclose(out["b"].numpy(), X["b"] + 0.25 * 1.0 + 0.75 * 2.0)


def test_a_pace_reply_is_decoded_as_what_it_says_it_sent():
    s = DrlCompress(num_rounds=10, update_aggregation="sent-mean")
    list(s.configure_train(1, arrays(**X), ConfigRecord({}), FakeGrid([1, 2, 3])))
    full = {"w": np.array([[1.0, 0.0, 1.0, 1.0]], np.float32), "b": np.array([1.0], np.float32)}
    sparse = {"w": np.array([[0.0, 4.0, 0.0, -8.0]], np.float32), "b": np.array([2.0], np.float32)}
    out, _ = s.aggregate_train(1, [_drl_reply(1, 100, "pace-full", full),
                                   _drl_reply(2, 300, "pace-compressed", sparse), _drl_reply(3, 600, "skip")])
    # the same step as a "full" and a "compressed" reply (the sent-mean test above): the dense one counts as dense
    np.testing.assert_allclose(out["w"].numpy(), X["w"] + np.array([[1.0, 3.0, 1.0, 0.25 - 6.0]]))
    extra = s.rounds[1].extra
    assert (extra["sync-pace-full"], extra["sync-pace-compressed"], extra["sync-full"], extra["senders"]) == (1, 1, 0, 2)
    # a pace reply without the record it names is refused like any malformed one
    bad = reply(1, arrays(w=[[0.0] * 4], b=[0.0]), 100, metadata=_meta(1, 100, "pace-full"))
    del bad.content["arrays"]
    s2 = DrlCompress(num_rounds=10)
    list(s2.configure_train(1, arrays(**X), ConfigRecord({}), FakeGrid([1, 2, 3])))
    out, _ = s2.aggregate_train(1, [bad])
    assert s2.rounds[1].extra["senders"] == 0 and out is None
    assert "full-sync reply has no ArrayRecord" in dict(s2.rounds[1].dropped)[1]


def test_sent_mean_exact():
    from strategies.drl_compress import sent_mean

    dense = [{"a": np.array([2.0, 0.0, 6.0], np.float32)}, {"a": np.array([4.0, 2.0, 0.0], np.float32)}]
    # dense only: the plain weighted mean (weights 1 and 3), zeros included
    assert sent_mean(dense, [1.0, 3.0], [True, True])["a"].tolist() == [3.5, 1.5, 1.5]
    # both top-k: each coordinate over its senders; nobody sent nothing -> 0
    sparse = dense + [{"a": np.array([0.0, 0.0, 0.0], np.float32)}]
    assert sent_mean(sparse, [1.0, 3.0, 4.0], [False, False, False])["a"].tolist() == [3.5, 2.0, 6.0]
    assert sent_mean([{"a": np.zeros(2, np.float32)}], [1.0], [False])["a"].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="dense flags"):
        sent_mean(dense, [1.0, 3.0], [True])


def test_all_skip_keeps_the_model():
    s = _strategy()
    out, metrics = s.aggregate_train(1, [_drl_reply(1, 10, "skip"), _drl_reply(2, 10, "skip")])
    assert out is None and metrics is not None and s.rounds[1].extra["senders"] == 0


def test_bad_compressed_payload_and_unknown_decision_are_dropped():
    s = _strategy()
    bad = _drl_reply(1, 10, "compressed", X)
    idx_key = next(k for k in bad.content["delta-compressed"].keys() if k.endswith("/gap"))
    bad.content["delta-compressed"][idx_key] = arrays(x=[0.0])["x"]  # float gaps
    weird = _drl_reply(2, 10, "skip")
    weird.content["config-smuggle"] = ConfigRecord({"a": 1})
    weird.content["metadata"] = _meta(2, 10, "rm -rf")
    ok = _drl_reply(3, 10, "full", {k: np.ones_like(v) for k, v in X.items()})
    out, _ = s.aggregate_train(1, [bad, weird, ok])
    np.testing.assert_allclose(out["w"].numpy(), X["w"] + 1.0)
    reasons = dict(s.rounds[1].dropped)
    assert "gap: expected 1-D uint16, got float32" in reasons[1] and "not one of" in reasons[2]


@pytest.mark.parametrize("residual_on_dense", ["flush", "drop"])
def test_a_dense_update_flushes_or_drops_the_residual_as_configured(residual_on_dense):
    from flwr.app import Context, RecordDict

    from fedrl_app.client.sync import RESIDUAL_KEY, decide_and_encode

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    g = {"w": np.zeros(100, np.float32)}

    def step(server_round, local, policy):
        return decide_and_encode(context, g, {"w": local}, 0.5, server_round, 10, 1.0, 0.0, seed=0, policy=policy,
                                 reward_kind="global-gain", residual_on_dense=residual_on_dense)

    step(1, np.arange(100, dtype=np.float32), "compressed")  # top-1%: entry 99 sent, 1..98 kept in the residual
    left_out = np.arange(100, dtype=np.float32)
    left_out[99] = 0.0
    np.testing.assert_allclose(context.state[RESIDUAL_KEY]["w"].numpy(), left_out, atol=1e-6)
    dense = step(2, np.full(100, 7.0, np.float32), "full")
    sent = dense.records["delta"]["w"].numpy()
    np.testing.assert_allclose(sent, 7.0 + (left_out if residual_on_dense == "flush" else 0.0), atol=1e-6)
    assert RESIDUAL_KEY not in context.state.array_records  # gone either way: a dense update leaves nothing out
    with pytest.raises(ValueError, match="residual_on_dense must be one of"):
        decide_and_encode(context, g, {"w": g["w"]}, 0.5, 3, 10, 1.0, 0.0, seed=0, policy="full",
                          reward_kind="global-gain", residual_on_dense="keep")


def test_skip_drops_the_update_and_keeps_the_compression_residual(monkeypatch):
    from flwr.app import Context, RecordDict

    from fedrl_app.agents.sync_controller import SKIP, SyncController
    from fedrl_app.client.sync import RESIDUAL_KEY, decide_and_encode

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    g = {"w": np.zeros(100, np.float32)}
    first = decide_and_encode(context, g, {"w": np.arange(100, dtype=np.float32)}, 0.5, 1, 10, 1.0, 0.0,
                              seed=0, policy="compressed", reward_kind="global-gain")
    residual = context.state[RESIDUAL_KEY]["w"].numpy().copy()
    assert first.action == "compressed" and np.count_nonzero(residual) == 98  # 99 was sent; 0 is zero anyway
    monkeypatch.setattr(SyncController, "act", lambda self, state, greedy=False: SKIP)
    skipped = decide_and_encode(context, g, {"w": np.full(100, 7.0, np.float32)}, 0.5, 2, 10, 1.0, 0.0, seed=0,
                                reward_kind="global-gain")
    assert skipped.action == "skip" and skipped.records == {} and skipped.bytes_fraction == 0.0
    np.testing.assert_array_equal(context.state[RESIDUAL_KEY]["w"].numpy(), residual)  # nothing banked


def test_own_gain_reward_is_what_the_message_adds_minus_its_bytes(monkeypatch):
    from flwr.app import Context, RecordDict

    from fedrl_app.agents.sync_controller import SKIP, SyncController
    from fedrl_app.client.sync import decide_and_encode

    def accuracy_of(weights):  # a stand-in "accuracy": the sum of the weights / 1000
        return float(weights["w"].sum()) / 1000

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    g = {"w": np.zeros(100, np.float32)}
    local = {"w": np.arange(100, dtype=np.float32)}

    def step(server_round, policy):
        return decide_and_encode(context, g, local, 0.5, server_round, 10, 2.0, 0.0, seed=0, policy=policy,
                                 reward_kind="own-gain", accuracy_of=accuracy_of)

    full = step(1, "full")
    assert full.action == "full" and full.bytes_fraction == 1.0 and full.reward is None
    compressed = step(2, "compressed")  # the full message added 4950/1000 − 0.5, at λ = 2 times 1.0 of the bytes
    assert compressed.reward == pytest.approx((4.95 - 0.5) - 2.0 * 1.0)
    monkeypatch.setattr(SyncController, "act", lambda self, state, greedy=False: SKIP)
    skipped = step(3, "dqn")  # top-1% of 100 entries sends only w[99] = 99 (int8, exact for one value)
    assert skipped.reward == pytest.approx((0.099 - 0.5) - 2.0 * compressed.bytes_fraction, rel=1e-6)
    after = step(4, "dqn")
    assert after.reward == 0.0  # a skip adds nothing and costs nothing


def _skip_with_transition(node, before, action, reward, after):
    meta = encode_metadata(ClientMetadata(
        partition_id=node, num_examples=10, train_time_s=0.1, sync_decision="skip", controller_reward=reward,
        controller_state=after, controller_previous_state=before, controller_previous_action=action))
    msg = reply(node, arrays(w=[[0.0] * 4], b=[0.0]), 10, metadata=meta)
    del msg.content["arrays"]
    return msg


def test_a_shared_controller_travels_down_learns_from_every_client_and_is_checkpointed():
    from fedrl_app.agents.sync_controller import ControllerConfig, SyncController

    s = DrlCompress(num_rounds=10, shared_controller=ControllerConfig(), seed=3)
    msgs = list(s.configure_train(1, arrays(**X), ConfigRecord({}), FakeGrid([1, 2, 3])))
    q = {k: v.detach().numpy() for k, v in s.shared.q.state_dict().items()}
    for msg in msgs:  # every client gets the shared Q-network beside the model
        assert {k: v.numpy().tolist() for k, v in msg.content["controller"].items()} == \
               {k: v.tolist() for k, v in q.items()}
    a, b = [0.1] * 5, [0.2] * 5
    s.aggregate_train(1, [_skip_with_transition(1, a, 1, 0.05, b), _skip_with_transition(2, b, 2, 1e6, a),
                          _skip_with_transition(3, [0.1] * 7, 1, 0.0, b)])  # 7 numbers: not this controller's
    assert [t[1:3] for t in s.shared.buffer] == [(1, 0.05), (2, 10.0)]  # the hostile reward is clipped
    assert s.rounds[1].extra["shared-controller-transitions"] == 2 and s.shared.gradient_steps == 16
    fresh = DrlCompress(num_rounds=10, shared_controller=ControllerConfig(), seed=4)
    fresh.load_state_dict(s.state_dict())
    assert fresh.shared.buffer == s.shared.buffer and fresh.shared.gradient_steps == 16
    restored = SyncController.from_bytes(s.shared.to_bytes())
    assert all(np.array_equal(restored.q.state_dict()[k], fresh.shared.q.state_dict()[k]) for k in q)


def test_a_client_acts_with_the_shared_network_and_does_not_learn_itself():
    import torch
    from flwr.app import Context, RecordDict

    from fedrl_app.agents.sync_controller import SyncController
    from fedrl_app.client.sync import CONTROLLER_KEY, decide_and_encode

    shared = SyncController(seed=9)
    with torch.no_grad():
        shared.q.net[-1].bias.copy_(torch.tensor([0.0, 0.0, 5.0, 0.0, 0.0]))  # strongly prefers skip
    shared_q = {k: v.detach().numpy() for k, v in shared.q.state_dict().items()}
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    local = {k: v + 0.01 for k, v in X.items()}
    decisions = []
    for server_round in (1, 2, 3):
        d = decide_and_encode(context, X, local, 0.5, server_round, 10, 0.1, 0.0, seed=1, reward_kind="global-gain",
                              shared_q=shared_q)
        decisions.append(d.action)
    stored = SyncController.from_bytes(context.state.config_records[CONTROLLER_KEY]["blob"])
    assert stored.buffer == [] and stored.gradient_steps == 0  # it reported its transitions instead
    assert decisions.count("skip") >= 2  # the shared network's choice, bar ε-exploration
    assert d.previous_action is not None and d.previous_state is not None and d.reward is not None


def test_a_compressed_update_obeys_the_same_magnitude_policy_as_a_dense_one():
    s = _strategy()
    huge = {"w": np.full((1, 4), 3e30, np.float32), "b": np.array([1.0], np.float32)}  # finite float32: decodes
    out, _ = s.aggregate_train(1, [_drl_reply(1, 10, "compressed", huge), _drl_reply(2, 10, "full", huge)])
    reasons = [why for _, why in s.rounds[1].dropped]
    assert out is None and len(reasons) == 2 and all("> 1e+06" in why for why in reasons)


def test_norm_bounding_scales_decoded_updates_down():
    s = _strategy()
    s.configure_update_bounds(max_update_norm=1.0)
    big = {"w": np.array([[3.0, 0.0, 0.0, 4.0]], np.float32), "b": np.array([0.0], np.float32)}  # norm 5
    out, _ = s.aggregate_train(1, [_drl_reply(1, 10, "full", big)])
    np.testing.assert_allclose(out["w"].numpy() - X["w"], [[0.6, 0.0, 0.0, 0.8]], rtol=1e-6)
    assert s.rounds[1].extra["updates-norm-bounded"] == 1


@pytest.mark.parametrize("rule", ["median", "trimmed-mean"])
def test_robust_rules_over_decoded_updates_shrug_off_a_scaled_attacker(rule):
    s = DrlCompress(num_rounds=10, update_aggregation=rule, trimmed_beta=0.2)
    list(s.configure_train(1, arrays(**X), ConfigRecord({}), FakeGrid([1, 2, 3, 4, 5])))
    honest = {"w": np.array([[1.0, 1.0, 1.0, 1.0]], np.float32), "b": np.array([1.0], np.float32)}
    attacker = {"w": np.full((1, 4), -1e5, np.float32), "b": np.array([-1e5], np.float32)}
    replies = [_drl_reply(n, 10, "full", honest) for n in range(1, 5)] + [_drl_reply(5, 10, "full", attacker)]
    out, _ = s.aggregate_train(1, replies)
    np.testing.assert_allclose(out["w"].numpy() - X["w"], [[1.0] * 4])  # median and the 20%-trimmed mean: honest


def test_trimmed_mean_and_median_exact():
    from strategies.drl_compress import coordinate_median, trimmed_mean

    ups = [{"a": np.array([v], np.float32)} for v in (1.0, 2.0, 3.0, 4.0, 100.0)]
    assert coordinate_median(ups)["a"].tolist() == [3.0]
    assert trimmed_mean(ups, 0.2)["a"].tolist() == [3.0]   # cut 1 at each end: mean(2, 3, 4)
    assert trimmed_mean(ups, 0.0)["a"].tolist() == [22.0]
    # sparse updates: the rules run over the clients that sent each coordinate, scaled by their share
    sparse = [{"a": np.array([v, 0.0, 0.0], np.float32)} for v in (1.0, 2.0, 3.0, 4.0, 100.0)]
    sparse[0]["a"][1] = 5.0       # coordinate 1: one sender; coordinate 2: none
    assert trimmed_mean(sparse, 0.2)["a"].tolist() == [3.0, 1.0, 0.0]   # 5 × 1/5: what FedAvg would add
    assert coordinate_median(sparse)["a"].tolist() == [3.0, 1.0, 0.0]
    half = [{"a": np.array([v], np.float32)} for v in (2.0, 4.0, 6.0, 0.0, 0.0)]   # 3 of 5 sent
    assert trimmed_mean(half, 0.4)["a"].tolist() == [pytest.approx(4.0 * 3 / 5)]   # cut ⌊0.4·3⌋ = 1 each end
    with pytest.raises(ValueError, match="update_aggregation"):
        DrlCompress(update_aggregation="krum")


@pytest.mark.parametrize("time_cost", ["upload", "added-delay"])
def test_the_reward_charges_the_time_the_message_costs(time_cost):
    from flwr.app import Context, RecordDict

    from fedrl_app.agents.sync_controller import ControllerConfig
    from fedrl_app.client.sync import ClientSystem, decide_and_encode
    from fedrl_app.protocol.records import recorddict_nbytes
    from fedrl_app.systems.profiles import ClientProfile

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    g = {"w": np.zeros(100, np.float32)}
    # a 1 kbit/s uplink and 1 s of compute, told that the round's pace is 2 s
    system = ClientSystem(ClientProfile(1.0, 1e6, 1.0, 1.0, 0.0), download_bytes=0, train_samples=1000, pace_s=2.0)
    config = ControllerConfig(bytes_penalty=0.0, time_penalty=1.0, time_cost=time_cost)

    def step(server_round):
        return decide_and_encode(context, g, {"w": np.ones(100, np.float32)}, 0.5, server_round, 10, 0.0, 0.0, seed=0,
                                 policy="full", reward_kind="own-gain", accuracy_of=lambda w: 0.5,
                                 controller_config=config, system=system)

    dense = recorddict_nbytes(RecordDict(step(1).records))
    upload = system.profile.upload_s(dense)  # ~3.3 s
    seconds = upload if time_cost == "upload" else 1.0 + upload - 2.0  # compute + upload, past the 2 s pace
    # the own gain is 0 (a flat accuracy): the reward is minus the time over a dense upload on the median link
    assert step(2).reward == pytest.approx(-seconds / system.reference_s(dense))


def test_the_pace_rule_sends_dense_when_it_is_free_and_compressed_when_not():
    from flwr.app import Context, RecordDict

    from fedrl_app.client.sync import ClientSystem, decide_and_encode
    from fedrl_app.systems.profiles import ClientProfile

    profile = ClientProfile(1.0, 1e6, 1.0, 1.0, 0.0)  # 1 kbit/s up (a 400 B dense update: ~3.3 s), 1 s of compute

    def decide(pace_s):
        context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
        return decide_and_encode(context, {"w": np.zeros(100, np.float32)}, {"w": np.ones(100, np.float32)}, 0.5, 2,
                                 10, 0.1, 0.0, seed=0, policy="pace-rule", reward_kind="global-gain",
                                 system=ClientSystem(profile, 0, 1000, pace_s=pace_s))

    assert decide(60.0).action == "full" and "delta" in decide(60.0).records
    slow = decide(1.5)  # 0.5 s of upload left: 0.5 kbit = 62 B, so the largest rate whose ~0.75 · r · 400 B fits
    assert slow.action == "compressed" and slow.compression_rate == 0.125
