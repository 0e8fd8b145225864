"""The systems model and the virtual clock: profiles, traces, round times, deadlines, dropouts, async arrival order."""

import math

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict

from fedrl_app import client_app
from fedrl_app.agents.sync_controller import ControllerConfig, SyncController
from fedrl_app.client.sync import ClientSystem
from fedrl_app.config import RunConfig
from fedrl_app.protocol import keys
from fedrl_app.server.registry import build_strategy
from fedrl_app.systems.clock import client_time, samples_within_deadline, synchronous_round_s
from fedrl_app.systems.profiles import ClientProfile, ProfileError, SystemsModel, median_mobile_profile, mobile_profile
from fedrl_app.tasks import mnist
from strategies import AsyncBuffer, FedAvg
from strategies.wrapper import innermost
from tests.helpers import FakeGrid, InstantGrid, arrays, reply

HEADER = "partition_id,uplink_kbps,downlink_kbps,ms_per_sample,availability,latency_ms\n"


def trace(tmp_path, rows: str, header: str = HEADER):
    path = tmp_path / "trace.csv"
    path.write_text(header + rows)
    return f"file:{path}"


# --- profiles -------------------------------------------------------------------------------------
def test_mobile_profiles_have_the_published_shape_and_do_not_depend_on_the_federation_size():
    profiles = [mobile_profile(pid, seed=7) for pid in range(4000)]
    uplink = np.array([p.uplink_kbps for p in profiles])
    assert 5400 < np.median(uplink) < 6600                       # median ≈ 6 Mbps
    assert 0.2 < np.mean(uplink < 3000) < 0.3                     # about a quarter under 3 Mbps
    assert all(p.downlink_kbps == pytest.approx(5 * p.uplink_kbps) for p in profiles)
    forward_ms = np.array([p.ms_per_sample / 3 for p in profiles])  # ×3: forward + backward
    assert np.median(forward_ms) == pytest.approx(5 * math.e, rel=0.05)
    assert np.std(np.log(forward_ms)) == pytest.approx(0.6, rel=0.05)
    assert 0.84 < 1 - np.mean([1 - p.availability for p in profiles]) < 0.86  # ~15% of client-rounds fail
    assert mobile_profile(3, seed=7) == profiles[3] and mobile_profile(3, seed=8) != profiles[3]


def test_uniform_is_the_median_mobile_client_always_available():
    model = SystemsModel("uniform", seed=1)
    assert model.profile(0) == model.profile(9) == median_mobile_profile()
    p = median_mobile_profile()
    assert (p.uplink_kbps, p.downlink_kbps, p.availability) == (6000.0, 30000.0, 1.0)
    assert p.ms_per_sample == pytest.approx(15 * math.e)
    assert all(model.available(pid, r) for pid in range(10) for r in range(1, 20))


def test_availability_is_seeded_and_near_the_profile_probability():
    model = SystemsModel("mobile", seed=3)
    draws = [model.available(2, r) for r in range(1, 2001)]
    assert draws == [model.available(2, r) for r in range(1, 2001)]
    assert np.mean(draws) == pytest.approx(model.profile(2).availability, abs=0.03)
    assert [model.available(2, 5, a) for a in range(50)] != [model.available(2, 5, 0)] * 50  # a retry redraws


def test_trace_file_profiles_and_errors_naming_row_and_column(tmp_path):
    model = SystemsModel(trace(tmp_path, "0,1000,8000,2.5,0.9,10\n1,500,500,1,1.0,\n"), seed=0)
    assert model.profile(0) == ClientProfile(1000.0, 8000.0, 2.5, 0.9, 10.0)
    assert model.profile(1).latency_ms == 50.0  # optional column left empty: the default
    with pytest.raises(ProfileError, match="no row for partition 2"):
        model.profile(2)
    with pytest.raises(ProfileError, match=r"row 3, column 'uplink_kbps': 'fast' is not a number"):
        SystemsModel(trace(tmp_path, "0,1000,8000,2.5,0.9,10\n1,fast,500,1,1.0,0\n"), seed=0)
    with pytest.raises(ProfileError, match=r"row 2, column 'availability': '1.5' is out of range"):
        SystemsModel(trace(tmp_path, "0,1000,8000,2.5,1.5,10\n"), seed=0)
    with pytest.raises(ProfileError, match=r"missing column\(s\) \['ms_per_sample'\]"):
        SystemsModel(trace(tmp_path, "0,1,1,1\n", header="partition_id,uplink_kbps,downlink_kbps,availability\n"), 0)
    with pytest.raises(ProfileError, match="row 3, column 'partition_id': partition 0 repeats"):
        SystemsModel(trace(tmp_path, "0,1,1,1,1,0\n0,1,1,1,1,0\n"), seed=0)
    with pytest.raises(ProfileError, match="no trace file"):
        SystemsModel(f"file:{tmp_path / 'missing.csv'}", seed=0)


def test_a_bad_profile_name_is_a_config_error_naming_the_key():
    from fedrl_app.config import ConfigError, RunConfig
    from fedrl_app.server.registry import parse_config

    with pytest.raises(ConfigError, match=r"'systems-profile' is 'lte'; allowed values: \['uniform', 'mobile'\]"):
        RunConfig.from_run_config({"systems-profile": "lte"})
    with pytest.raises(ConfigError, match="no trace file"):
        parse_config({"systems-profile": "file:/nonexistent/trace.csv"})


# --- the clock ----------------------------------------------------------------------------------------
def test_client_time_is_download_compute_upload_with_latency():
    p = ClientProfile(uplink_kbps=8.0, downlink_kbps=80.0, ms_per_sample=2.0, availability=1.0, latency_ms=100.0)
    t = client_time(p, download_bytes=1000, samples=500, upload_bytes=3000)
    # 1000 B = 8 kbit at 80 kbit/s = 0.1 s, + 0.1 s latency; 500 × 2 ms = 1 s; 24 kbit at 8 kbit/s = 3 s + 0.1 s
    assert (t.download_s, t.compute_s, t.upload_s) == pytest.approx((0.2, 1.0, 3.1))
    assert t.total_s == pytest.approx(4.3) and t.as_list() == [0.2, 1.0, 3.1]


def test_partial_work_trains_what_fits_before_the_deadline():
    p = ClientProfile(uplink_kbps=8.0, downlink_kbps=80.0, ms_per_sample=2.0, availability=1.0, latency_ms=100.0)
    # deadline 10 s − download 0.2 s − upload 3.1 s = 6.7 s of compute; 2 epochs × 2 ms = 4 ms a sample: 1675
    assert samples_within_deadline(p, 1000, 3000, epochs=2, deadline_s=10.0, available=5000) == 1675
    assert samples_within_deadline(p, 1000, 3000, epochs=2, deadline_s=10.0, available=1000) == 1000  # all fit
    assert samples_within_deadline(p, 1000, 3000, epochs=1, deadline_s=3.0, available=1000, minimum=32) == 32
    t = client_time(p, 1000, 2 * 1675, 3000)
    assert t.total_s <= 10.0 < client_time(p, 1000, 2 * 1676, 3000).total_s


def test_partial_work_needs_a_deadline_and_mnist():
    from fedrl_app.config import ConfigError, RunConfig
    with pytest.raises(ConfigError, match="'local-work' = 'deadline' needs task 'mnist' and a round deadline"):
        RunConfig.from_run_config({"local-work": "deadline"})
    assert RunConfig.from_run_config({"local-work": "deadline", "round-deadline-s": 300.0}).local_work == "deadline"


def test_a_synchronous_round_lasts_as_long_as_its_slowest_client_or_the_deadline():
    assert synchronous_round_s([1.0, 4.0, 2.0], 0, deadline_s=0.0) == 4.0
    assert synchronous_round_s([1.0, 2.0], 1, deadline_s=3.0) == 3.0   # someone missed it: the server waited
    assert synchronous_round_s([1.0, 2.0], 0, deadline_s=3.0) == 2.0   # everyone in: no need to wait
    assert synchronous_round_s([], 2, deadline_s=0.0) == 0.0


def compute_bound_trace(tmp_path, ms: dict[int, float]) -> str:
    """Profiles where only compute counts: links of 1e9 kbit/s, no latency; `ms[pid]` per sample."""
    return trace(tmp_path, "".join(f"{pid},1e9,1e9,{m},1.0,0\n" for pid, m in ms.items()))


def test_server_times_each_reply_drops_late_ones_and_counts_dropouts(tmp_path):
    s = FedAvg()
    s.configure_clock(SystemsModel(compute_bound_trace(tmp_path, {1: 100, 2: 250, 3: 50}), seed=0), deadline_s=2.0)
    msgs = {m.metadata.dst_node_id: m for m in s.configure_train(1, arrays(w=[0.0, 0.0]), ConfigRecord({}),
                                                                 FakeGrid([1, 2, 3, 4]))}
    assert set(s._download_bytes) == {1, 2, 3, 4} and min(s._download_bytes.values()) > 0
    dropout = Message(Error(code=keys.UNAVAILABLE_CODE, reason=f"{keys.UNAVAILABLE}: partition 4 dropped out"),
                      reply_to=msgs[4])
    replies = [reply(n, arrays(w=[1.0, 1.0]), 10, to=msgs[n]) for n in (1, 2, 3)] + [dropout]
    kept = s.filter_train_replies(1, replies)
    assert sorted(m.metadata.src_node_id for m in kept) == [1, 3]   # 10 samples × 250 ms = 2.5 s > 2 s
    extra = s.rounds[1].extra
    assert (extra["clients-late"], extra["clients-unavailable"]) == (1, 1)
    assert extra["round-sim-time-s"] == 2.0                          # the server waited until the deadline
    assert extra["client-times-s"]["1"][1] == pytest.approx(1.0) and set(extra["client-times-s"]) == {"1", "3"}
    assert any("late: 2.5 s" in why for _, why in s.rounds[1].dropped)


def test_async_arrivals_follow_the_virtual_clock(tmp_path):
    # the speeds test's scenario, now from profiles: node 1 needs 1.0 s a job, node 2 2.5 s (10 samples each)
    inner = FedAvg(**AsyncBuffer.required_settings)
    inner.configure_clock(SystemsModel(compute_bound_trace(tmp_path, {1: 100, 2: 250}), seed=0))
    grid = InstantGrid([1, 2], lambda msg: reply(msg.metadata.dst_node_id, arrays(
        w=msg.content["arrays"]["w"].numpy() + (1.0 if msg.metadata.dst_node_id == 1 else 10.0)), 10, to=msg))
    strategy = AsyncBuffer(inner, buffer_size=2, staleness_exponent=1.0, poll_interval=0.0)
    evaluated = {}
    strategy.start(grid, arrays(w=[0.0]), num_rounds=2, train_config=ConfigRecord({}),
                   evaluate_fn=lambda r, a: evaluated.setdefault(r, float(a["w"].numpy()[0])) and None)
    assert evaluated == {0: 0.0, 1: 1.0, 2: 5.0}
    assert [(v, n, t) for v, n, t in strategy.staleness] == [(1, 1, 0), (1, 1, 0), (2, 2, 1), (2, 1, 0)]
    assert strategy.sim_time == pytest.approx(3.0)
    assert inner.rounds[1].extra["round-sim-time-s"] == pytest.approx(2.0)
    assert inner.rounds[2].extra["round-sim-time-s"] == pytest.approx(1.0)
    assert [m.content["config"]["attempt"] for m in grid.pushed][:3] == [0, 1, 2]


# --- the client's view of its system -------------------------------------------------------------------
def test_client_system_deadline_and_bandwidth_rule():
    slow = ClientSystem(ClientProfile(1000.0, 5000.0, 1.0, 0.9, 0.0), download_bytes=0, train_samples=1000,
                        deadline_s=2.0)
    dense = 800_000
    assert slow.round_s(dense) == pytest.approx(1.0 + 6.4) and slow.late(dense)
    assert slow.estimated_bytes(0.01, dense) == 6000
    # 1 Mbps is 1/6 of the median uplink: base 6% -> 1%; that upload (6 kB = 0.048 s) makes the deadline
    assert slow.bandwidth_rule_rate(0.06, dense, low=0.001, high=0.25) == pytest.approx(0.01)
    tight = ClientSystem(slow.profile, 0, 1000, deadline_s=1.02)  # 20 ms left for the upload: halve until it fits
    rate = tight.bandwidth_rule_rate(0.06, dense, low=0.001, high=0.25)
    assert rate < 0.01 and not tight.late(tight.estimated_bytes(rate, dense))
    fast = ClientSystem(ClientProfile(60000.0, 300000.0, 1.0, 1.0, 0.0), 0, 1000)
    assert fast.bandwidth_rule_rate(0.06, dense, low=0.001, high=0.25) == 0.25  # 10× the median link, capped


def test_resource_features_enter_the_controller_state_and_survive_persistence():
    system = ClientSystem(ClientProfile(1000.0, 5000.0, 1.0, 0.8, 0.0), 0, 1000, deadline_s=10.0)
    c = SyncController(ControllerConfig(features="resources", time_penalty=1.0), seed=0)
    state = c.encode_state(0.9, 0.5, 2, 0.1, system.resources(c.rate, 800_000))
    assert len(state) == 9 and state[-1] == 0.8
    assert state[5] == pytest.approx((6.4 / 10) / (1 + 6.4 / 10))  # full upload: 6.4 s of a 10 s deadline
    assert state[7] == pytest.approx((1.0 / 10) / (1 + 1.0 / 10))  # download + compute: 1 s
    assert c.reward(0.0, 0.02, bytes_fraction=0.1, time_cost=0.5) == pytest.approx(0.02 - 0.1 * 0.1 - 0.5)
    with pytest.raises(ValueError, match="need the client's Resources"):
        c.encode_state(0.9, 0.5, 2, 0.1)
    c.remember(state, 1, 0.5, state)
    restored = SyncController.from_bytes(c.to_bytes())
    assert restored.config.state_dim == 9 and restored.buffer == c.buffer


def test_an_unavailable_client_answers_with_an_error_and_does_not_train(tmp_path):
    spec = trace(tmp_path, "0,1000,1000,1,0.000001,0\n")  # never available
    run_config = {"systems-profile": spec}
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 1}, state=RecordDict(),
                      run_config=run_config)
    msg = Message(RecordDict({"config": ConfigRecord({"server-round": 3, "role": "supervised"})}), dst_node_id=1,
                  message_type="train")
    out = client_app.train(msg, context)
    assert out.has_error() and out.error.code == keys.UNAVAILABLE_CODE
    assert out.error.reason.startswith("unavailable: partition 0 dropped out of round 3")


def test_a_slow_client_trains_only_what_fits_before_the_deadline(tmp_path):
    spec = trace(tmp_path, "0,1e9,1e9,10,1.0,0\n")  # 10 ms a sample, links that cost nothing
    run_config = {"systems-profile": spec, "local-work": "deadline", "round-deadline-s": 1.0,
                  "max-client-examples": 300, "seed": 3}
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 2}, state=RecordDict(),
                      run_config=run_config)
    msg = Message(RecordDict({"arrays": arrays(**{k: v.numpy() for k, v in mnist.Net().state_dict().items()}),
                              "config": ConfigRecord({"server-round": 1, "role": "supervised", "lr": 0.05,
                                                      "local-epochs": 1, "batch-size": 32})}),
                  dst_node_id=1, message_type="train")
    out = client_app.train(msg, context)
    assert not out.has_error()
    # (1.0 s − a few µs of transfer) / 10 ms = 99 examples of the partition's 225, one epoch
    assert out.content["metrics"]["num-examples"] == 99


def test_fixed_local_work_trains_a_fresh_subset_of_local_samples_each_round():
    run_config = {"local-work": "samples", "local-samples": 40, "max-client-examples": 300, "seed": 3,
                  "mnist-width": 2}
    weights = {k: v.numpy() for k, v in mnist.Net(2).state_dict().items()}
    replies = []
    for server_round in (1, 2):
        context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 2},
                          state=RecordDict(), run_config=run_config)
        msg = Message(RecordDict({"arrays": arrays(**weights),
                                  "config": ConfigRecord({"server-round": server_round, "role": "supervised",
                                                          "lr": 0.05, "local-epochs": 1, "batch-size": 8})}),
                      dst_node_id=1, message_type="train")
        replies.append(client_app.train(msg, context))
    assert [r.content["metrics"]["num-examples"] for r in replies] == [40, 40]
    trained = [r.content["arrays"]["fc2.weight"].numpy() for r in replies]
    assert trained[0].shape == (10, 256)                 # the width-2 CNN
    assert not np.allclose(trained[0], trained[1])      # a different subset (and seed) each round


def test_the_cnn_width_sets_the_upload_size():
    count = lambda w: sum(p.numel() for p in mnist.Net(w).parameters())  # noqa: E731
    # conv1 16w·25 + 16w, conv2 32w·16w·25 + 32w, fc1 32w·49·128w + 128w, fc2 128w·10 + 10
    for w in (1, 2, 4):
        assert count(w) == 416 * w + 12_800 * w * w + 32 * w + 200_704 * w * w + 128 * w + 1_280 * w + 10
    assert count(1) == 215_370 and count(4) == 3_423_498
    with pytest.raises(ValueError, match="width must be ≥ 1"):
        mnist.Net(0)


# --- what a message's time costs: its upload, or the delay it adds to the round ------------------------------
def test_added_delay_is_what_runs_past_the_pace_or_the_whole_upload_of_the_slowest():
    # 1 Mbps up: a dense 800 kB update takes 6.4 s; download + compute take 1.0 s
    profile = ClientProfile(1000.0, 5000.0, 1.0, 0.9, 0.0)
    dense = 800_000

    def system(pace_s: float) -> ClientSystem:
        return ClientSystem(profile, download_bytes=0, train_samples=1000, pace_s=pace_s)

    assert system(10.0).added_delay_s(dense) == 0.0                      # done at 7.4 s; the round lasts 10 s anyway
    assert system(5.0).added_delay_s(dense) == pytest.approx(7.4 - 5.0)  # runs 2.4 s past the pace
    assert system(0.5).added_delay_s(dense) == pytest.approx(6.4)        # the slowest itself: its whole upload
    assert system(0.0).added_delay_s(dense) == pytest.approx(6.4)        # no pace known: the upload's own time
    assert system(5.0).time_cost_s(dense, "upload") == pytest.approx(6.4)
    with pytest.raises(ValueError, match="time cost must be one of"):
        system(5.0).time_cost_s(dense, "energy")
    # the resource features carry the chosen cost: here a full update costs 2.4 s of a 10 s reference, top-1% nothing
    with_deadline = ClientSystem(profile, 0, 1000, deadline_s=10.0, pace_s=5.0)
    r = with_deadline.resources(0.01, dense, "added-delay")
    assert (r.full_cost_s, r.compressed_cost_s) == (pytest.approx(2.4), 0.0)
    c = SyncController(ControllerConfig(features="resources", time_penalty=1.0, time_cost="added-delay"), seed=0)
    assert SyncController.from_bytes(c.to_bytes()).config.time_cost == "added-delay"


def test_the_server_tells_the_next_round_its_pace_when_asked(tmp_path):
    s = FedAvg()
    s.configure_clock(SystemsModel(compute_bound_trace(tmp_path, {1: 100, 2: 250}), seed=0), broadcast_pace=True)
    first = list(s.configure_train(1, arrays(w=[0.0]), ConfigRecord({}), FakeGrid([1, 2])))
    assert all(keys.ROUND_PACE_S not in m.content["config"] for m in first)  # nothing measured yet
    s.filter_train_replies(1, [reply(m.metadata.dst_node_id, arrays(w=[1.0]), 10, to=m) for m in first])
    second = list(s.configure_train(2, arrays(w=[0.0]), ConfigRecord({}), FakeGrid([1, 2])))
    # the slowest download + compute of round 1: node 2's 10 samples × 250 ms (downloads on 1e9 kbit/s are ~0)
    assert [m.content["config"][keys.ROUND_PACE_S] for m in second] == [pytest.approx(2.5, abs=1e-3)] * 2
    quiet = FedAvg()
    quiet.configure_clock(SystemsModel(compute_bound_trace(tmp_path, {1: 100, 2: 250}), seed=0))
    msgs = list(quiet.configure_train(1, arrays(w=[0.0]), ConfigRecord({}), FakeGrid([1, 2])))
    quiet.filter_train_replies(1, [reply(m.metadata.dst_node_id, arrays(w=[1.0]), 10, to=m) for m in msgs])
    assert all(keys.ROUND_PACE_S not in m.content["config"]
               for m in quiet.configure_train(2, arrays(w=[0.0]), ConfigRecord({}), FakeGrid([1, 2])))


def test_a_resumed_run_broadcasts_the_pace_from_its_first_round():
    cfg = RunConfig.from_run_config({"strategy": "drl-compress", "sync-policy": "pace-rule",
                                     "controller-sharing": "shared"})
    before, after = build_strategy(cfg), build_strategy(cfg)
    innermost(before).round_pace_s = 47.5  # as `filter_train_replies` would have measured it
    state = before.state_dict()
    assert {"round-pace", "shared-controller"} <= set(state)
    after.load_state_dict(state)
    assert innermost(after).round_pace_s == 47.5
    msgs = list(innermost(after).configure_train(3, arrays(w=[0.0]), ConfigRecord({}), FakeGrid([1, 2])))
    assert [m.content["config"][keys.ROUND_PACE_S] for m in msgs] == [47.5, 47.5]
    # a run that does not broadcast the pace checkpoints none
    assert "round-pace" not in build_strategy(RunConfig.from_run_config({"strategy": "drl-compress"})).state_dict()
    # strategies with state of their own keep the reply guard's group beside theirs
    adagrad = build_strategy(RunConfig.from_run_config({"strategy": "fedadagrad"}))
    innermost(adagrad).broadcast_pace, innermost(adagrad).round_pace_s = True, 12.0
    assert {"round-pace", "m_t", "v_t"} <= set(adagrad.state_dict())


@pytest.mark.parametrize("asynchronous", [False, True])
def test_the_pace_is_broadcast_for_added_delay_on_synchronous_rounds_only(asynchronous):
    cfg = RunConfig.from_run_config({"strategy": "drl-compress", "time-cost": "added-delay",
                                     "async-aggregation": asynchronous})
    assert innermost(build_strategy(cfg)).broadcast_pace is (not asynchronous)
    assert innermost(build_strategy(RunConfig.from_run_config({"strategy": "drl-compress"}))).broadcast_pace is False
    # only sync controllers read the pace: other strategies send none, whatever the drl-compress keys say
    for other in ({"strategy": "fedavg", "time-cost": "added-delay"}, {"strategy": "fedadagrad", "sync-policy": "pace-rule"},
                  {"strategy": "fedprox", "controller-actions": "with-pace"}):
        assert innermost(build_strategy(RunConfig.from_run_config(other))).broadcast_pace is False


def test_without_a_byte_cost_dense_is_explored_as_often_as_skip():
    assert ControllerConfig().exploration_weights[0] == 0.02  # a random dense sync costs a model's bytes
    assert ControllerConfig(bytes_penalty=0.0).exploration_weights == (0.2, 0.38, 0.2, 0.2, 0.2)
    assert ControllerConfig(explore_weights=(1, 0, 0, 0, 0)).exploration_weights == (1, 0, 0, 0, 0)
    c = SyncController(ControllerConfig(bytes_penalty=0.0, epsilon_start=1.0, epsilon_end=1.0), seed=0)
    draws = [c.act([0.0] * 5) for _ in range(2000)]
    assert 0.14 < draws.count(0) / 2000 < 0.20  # full: 0.2 / 1.18 ≈ 0.17
    restored = SyncController.from_bytes(SyncController(ControllerConfig(explore_weights=(1, 0, 0, 0, 0))).to_bytes())
    assert restored.config.exploration_weights == (1, 0, 0, 0, 0)


def test_the_pace_rule_sends_the_densest_update_that_adds_no_delay():
    profile = ClientProfile(1000.0, 5000.0, 1.0, 0.9, 0.0)  # 1 Mbps up: dense 800 kB = 6.4 s; 1 s of compute
    dense = 800_000  # (a top-k entry is 3 bytes against 4: rate r sends 0.75 · r · 800 kB)

    def rule(pace_s: float, deadline_s: float = 0.0):
        system = ClientSystem(profile, 0, 1000, deadline_s=deadline_s, pace_s=pace_s)
        return system.pace_rule_rate(0.01, dense, 0.001, 0.25)

    assert rule(10.0) is None                    # done at 7.4 s, before the 10 s pace: dense is free
    # a 2 s pace leaves 1 s of upload: 25% (150 kB, 1.2 s) is too much, 12.5% (0.6 s) fits
    assert rule(2.0) == 0.125
    assert rule(1.29) == 0.03125                 # 0.29 s: 6.25% (0.3 s) is too much, 3.125% (0.15 s) fits
    assert rule(0.5) == 0.001                    # the slowest client sets the pace: every byte adds, so the floor
    assert rule(0.0, deadline_s=10.0) is None    # no pace yet: the deadline is the budget
    assert rule(0.0) == pytest.approx(0.01 / 6)  # neither: the bandwidth rule (1 Mbps is 1/6 of the median uplink)


def test_the_pace_action_sends_the_pace_rules_update_and_is_where_its_controller_starts():
    from fedrl_app.agents.sync_controller import PACE
    from fedrl_app.client.sync import decide_and_encode

    config = ControllerConfig(bytes_penalty=0.0, features="resources", time_penalty=0.1, time_cost="added-delay",
                              pace_action=True, epsilon_start=0.0, epsilon_end=0.0)  # greedy: the prior decides
    assert config.num_actions == 6 and len(config.exploration_weights) == 6
    assert SyncController(config, seed=0).act([0.5] * config.state_dim, greedy=True) == PACE
    restored = SyncController.from_bytes(SyncController(config, seed=0).to_bytes())
    assert restored.q(torch.zeros(1, config.state_dim)).shape == (1, 6)
    with pytest.raises(ValueError, match="start_action must be one of"):
        SyncController(ControllerConfig(start_action="pace"))  # no pace action, so no pace start
    with pytest.raises(ValueError, match="6 weights"):
        ControllerConfig(pace_action=True, explore_weights=(1, 0, 0, 0, 0)).exploration_weights
    profile = ClientProfile(1.0, 1e6, 1.0, 1.0, 0.0)  # 1 kbit/s up (a 400 B dense update: ~3.3 s), 1 s of compute

    def decide(pace_s):
        context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
        return decide_and_encode(context, {"w": np.zeros(100, np.float32)}, {"w": np.ones(100, np.float32)}, 0.5, 2,
                                 10, 0.0, 0.0, seed=0, policy="dqn", reward_kind="own-gain",
                                 accuracy_of=lambda w: 0.5, controller_config=config,
                                 system=ClientSystem(profile, 0, 1000, pace_s=pace_s))

    free, paid = decide(60.0), decide(1.5)  # as the pace rule: dense when it is free, else the largest rate that fits
    assert free.action == "pace-full" and keys.DELTA in free.records
    assert paid.action == "pace-compressed" and keys.DELTA_COMPRESSED in paid.records and paid.compression_rate == 0.125
    cfg = RunConfig.from_run_config({"strategy": "drl-compress", "controller-actions": "with-pace"})
    assert cfg.controller_config().pace_action and innermost(build_strategy(cfg)).broadcast_pace


def test_a_controller_starts_compressed_with_a_byte_cost_and_dense_without():
    from fedrl_app.agents.sync_controller import COMPRESSED, FULL

    def greedy(config):
        return SyncController(config, seed=0).act([0.5] * config.state_dim, greedy=True)

    assert greedy(ControllerConfig()) == COMPRESSED
    assert greedy(ControllerConfig(bytes_penalty=0.0)) == FULL
    assert greedy(ControllerConfig(bytes_penalty=0.0, start_action="compressed")) == COMPRESSED
    assert greedy(ControllerConfig(start_action="full")) == FULL  # the start is preferred whatever its byte cost
    with pytest.raises(ValueError, match="start_action"):
        SyncController(ControllerConfig(start_action="skip"))
