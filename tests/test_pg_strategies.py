"""FedPG, LAPG and AFedPG: the lazy condition, stale-gradient reuse, and AFedPG's arithmetic by hand."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedrl_app.agents.policy_gradient import PolicyNetwork
from fedrl_app.client import policy_gradient as pg_client
from fedrl_app.config import RunConfig
from fedrl_app.protocol.metadata import ClientMetadata, encode_metadata, read_metadata
from strategies import LAPG, AFedPG, FedPG
from strategies.afedpg import eta_schedule, lookahead_point, mixing_weight
from tests.helpers import FakeGrid, InstantGrid, arrays, reply

THETA = {"w": np.array([1.0, 2.0], np.float32)}


def pg_reply(node, gradient=None, *, to=None, env_steps=20):
    """A client reply: the gradient as ArrayRecord "gradient", or a lazy skip (no arrays) when None."""
    meta = encode_metadata(ClientMetadata(partition_id=node - 1, num_examples=env_steps, train_time_s=0.1,
                                          env_steps=env_steps, trajectories=2, gradient_norm=1.0,
                                          gradient_uploaded=gradient is not None))
    msg = reply(node, arrays(w=[0.0, 0.0]), env_steps, metadata=meta, to=to,
                metrics={"num-examples": env_steps, "episodes": 2, "return": 10.0})
    del msg.content["arrays"]
    if gradient is not None:
        msg.content["gradient"] = arrays(w=gradient)
    return msg


# --- the lazy condition (client side) ---------------------------------------------------------
def test_lazy_bound_exact():
    # (ξ/D)·(1/η²)·Σ_{d≤D} ‖Δθ‖²: ξ=2, D=2, η=0.5 -> 1·4·(1 + 3); older steps beyond D are ignored
    assert pg_client.lazy_bound([1.0, 3.0, 100.0], lr=0.5, threshold=2.0, memory=2) == pytest.approx(16.0)
    assert pg_client.lazy_bound([], lr=0.5, threshold=2.0, memory=2) == 0.0


def test_lazy_condition_upload_vs_skip():
    last = {"a": np.array([1.0, 1.0], np.float32), "b": np.array([0.0], np.float32)}
    new = {"a": np.array([1.0, 2.0], np.float32), "b": np.array([2.0], np.float32)}  # ‖new − last‖² = 1 + 4 = 5
    assert pg_client.lazy_skip(new, last, bound=5.0) == (True, 5.0)    # ≤ bound: skip
    assert pg_client.lazy_skip(new, last, bound=4.99) == (False, 5.0)  # > bound: upload
    assert pg_client.lazy_skip(new, None, bound=1e9) == (False, None)  # nothing uploaded yet: upload


def _client_round(context, server_round, threshold, recent):
    """One LAPG client round on CartPole from a fixed tiny policy."""
    torch.manual_seed(0)
    config = ConfigRecord({"server-round": server_round, "role": "policy-gradient", "lapg": True, "lr": 0.001,
                           "lapg-threshold": threshold, "lapg-memory": 10, "lapg-recent-steps": recent})
    msg = Message(RecordDict({"arrays": ArrayRecord(PolicyNetwork(4, 2, 8).state_dict()), "config": config}),
                  dst_node_id=1, message_type="train")
    cfg = RunConfig.from_run_config({"task": "cartpole", "strategy": "lapg", "pg-hidden": 8, "pg-batch-episodes": 2})
    return pg_client.train(msg, context, cfg)


def test_client_applies_the_lazy_condition_and_keeps_its_last_upload():
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 1}, state=RecordDict(),
                      run_config={})
    first = _client_round(context, 1, threshold=1e12, recent=[])  # no earlier upload: must upload
    assert "gradient" in first.content.array_records
    stored = context.state.array_records[pg_client.LAST_UPLOAD_KEY]["net.0.weight"].numpy()
    np.testing.assert_array_equal(stored, first.content["gradient"]["net.0.weight"].numpy())

    skip = _client_round(context, 2, threshold=1e12, recent=[1.0])  # a huge bound: skip
    assert not skip.content.array_records
    meta = read_metadata(skip.content)
    assert meta.gradient_uploaded is False and meta.gradient_change > 0
    assert meta.lazy_bound == pytest.approx(1e12 / 10 / 0.001**2 * 1.0)
    stored_after = context.state.array_records[pg_client.LAST_UPLOAD_KEY]["net.0.weight"].numpy()
    np.testing.assert_array_equal(stored_after, stored)  # a skip keeps round 1's upload

    upload = _client_round(context, 3, threshold=0.0, recent=[1.0])  # ξ = 0: any change uploads
    assert "gradient" in upload.content.array_records and read_metadata(upload.content).gradient_uploaded is True
    assert not np.array_equal(context.state.array_records[pg_client.LAST_UPLOAD_KEY]["net.0.weight"].numpy(), stored)


# --- FedPG -------------------------------------------------------------------------------------
def test_fedpg_ascends_on_the_mean_gradient_and_refuses_skips():
    s = FedPG(lr=0.5, speeds={1: 1.0, 2: 3.0}, jitter=0.0)
    msgs = list(s.configure_train(1, arrays(**THETA), ConfigRecord({}), FakeGrid([1, 2])))
    assert all(m.content["config"]["lr"] == 0.5 for m in msgs)
    out, _ = s.aggregate_train(1, [pg_reply(1, [2.0, 0.0]), pg_reply(2, [0.0, 4.0]), pg_reply(3, None)])
    np.testing.assert_allclose(out["w"].numpy(), THETA["w"] + 0.5 * np.array([1.0, 2.0]))
    extra = s.rounds[1].extra
    assert (extra["uploads"], extra["env-steps"], extra["env-steps-total"]) == (2, 40, 40)
    assert extra["sim-time"] == 3.0  # the slowest client's job (node 3, the refused skip, ran at speed 1.0)
    assert any("lazy skip" in reason for _, reason in s.rounds[1].dropped)


def test_fedpg_clock_follows_the_grids_node_order_not_the_node_ids():
    """Under PartitionOrderGrid the node list is in partition order; the same partitions under other node ids
    get the same slowness and jitter, so the clock reads the same. (Partitions 0 and 1 reply; 2 is silent.)"""
    def sim_times(node_ids):
        s = FedPG(lr=0.5, speed_sigma=1.0, seed=4, jitter=0.1)
        times = []
        for rnd in (1, 2, 3):
            list(s.configure_train(rnd, arrays(**THETA), ConfigRecord({}), FakeGrid(node_ids)))
            s.aggregate_train(rnd, [pg_reply(n, [1.0, 0.0]) for n in node_ids[:2]])
            times.append(s.rounds[rnd].extra["sim-time"])
        return times

    assert sim_times([3, 1, 2]) == sim_times([7, 8, 9])


# --- LAPG: the server reuses stale gradients ----------------------------------------------------
def test_lapg_reuses_the_last_upload_of_a_client_that_skipped():
    s = LAPG(lr=0.5, threshold=2.0, memory=3, speeds={1: 1.0, 2: 1.0}, jitter=0.0)
    msgs = list(s.configure_train(1, arrays(**THETA), ConfigRecord({}), FakeGrid([1, 2])))
    assert msgs[0].content["config"]["lapg-recent-steps"] == [] and msgs[0].content["config"]["lapg"] is True
    theta1, _ = s.aggregate_train(1, [pg_reply(1, [2.0, 0.0]), pg_reply(2, [0.0, 2.0])])
    np.testing.assert_allclose(theta1["w"].numpy(), [1.5, 2.5])  # θ0 + 0.5·(1, 1)

    msgs = list(s.configure_train(2, theta1, ConfigRecord({}), FakeGrid([1, 2])))
    assert msgs[0].content["config"]["lapg-recent-steps"] == pytest.approx([0.5])  # ‖(0.5, 0.5)‖²
    theta2, _ = s.aggregate_train(2, [pg_reply(1, None), pg_reply(2, [0.0, 6.0])])
    # node 1 skipped: its round-1 gradient (2, 0) is reused; mean((2, 0), (0, 6)) = (1, 3)
    np.testing.assert_allclose(theta2["w"].numpy(), [2.0, 4.0])
    extra = s.rounds[2].extra
    assert (extra["uploaded"], extra["skipped"], extra["uploads-saved"], extra["uploads-saved-total"]) == ([1], [0], 1, 1)
    assert extra["uploads"] == 1 and extra["lazy-bound"] == pytest.approx(2.0 / 3 / 0.25 * 0.5)

    msgs = list(s.configure_train(3, theta2, ConfigRecord({}), FakeGrid([1, 2])))
    assert msgs[0].content["config"]["lapg-recent-steps"] == pytest.approx([0.25 + 2.25, 0.5])  # newest first


def test_lapg_refuses_a_skip_it_cannot_fill_and_a_skip_with_arrays():
    s = LAPG(lr=0.5)
    list(s.configure_train(1, arrays(**THETA), ConfigRecord({}), FakeGrid([1, 2])))
    sneaky = pg_reply(2, None)
    sneaky.content["gradient"] = arrays(w=[1.0, 1.0])  # claims a skip, carries arrays
    out, _ = s.aggregate_train(1, [pg_reply(1, None), sneaky, pg_reply(3, [2.0, 2.0])])
    np.testing.assert_allclose(out["w"].numpy(), THETA["w"] + 0.5 * np.array([2.0, 2.0]))
    reasons = " | ".join(r for _, r in s.rounds[1].dropped)
    assert "no accepted upload" in reasons and "must carry no arrays" in reasons


# --- AFedPG ------------------------------------------------------------------------------------
def test_afedpg_formulas():
    assert eta_schedule(0, 0.8) == 1.0 and eta_schedule(3, 1.0) == 0.25
    theta, prev = {"w": np.array([2.0, 1.0], np.float32)}, {"w": np.array([2.0, 0.0], np.float32)}
    np.testing.assert_allclose(lookahead_point(theta, prev, 0.25)["w"], [2.0, 4.0])  # θ + 3·(θ − θ_prev)
    assert mixing_weight(1 / 3, 0, True) == pytest.approx(1 / 3)
    assert mixing_weight(1 / 3, 1, True) == pytest.approx(1 / 2)      # 1/(3 − 1)
    assert mixing_weight(1 / 3, 1, False) == pytest.approx(1 / 3)
    assert mixing_weight(1.0, 2, True) == 1.0                          # 1/η − δ ≤ 1: the fresh gradient alone


def gradient_grid(gradients: dict[int, list[float]]) -> InstantGrid:
    """Each pushed (policy-gradient) message is answered at once with `gradients[node]`."""
    def respond(msg):
        assert msg.content["config"]["role"] == "policy-gradient"  # the train config the ServerApp passes
        node = msg.metadata.dst_node_id
        return pg_reply(node, gradients[node], to=msg)
    return InstantGrid(sorted(gradients), respond)


@pytest.mark.parametrize("delay_adaptive", [True, False])
def test_afedpg_run_by_hand(delay_adaptive):
    # node 1: 1.0 per job, gradient (1, 0); node 2: 2.5 per job, gradient (0, 1); α = 1, η_v = 1/(v+1)
    grid = gradient_grid({1: [1.0, 0.0], 2: [0.0, 1.0]})
    s = AFedPG(FedPG(), step_size=1.0, eta_exponent=1.0, delay_adaptive=delay_adaptive, jitter=0.0,
               speeds={1: 1.0, 2: 2.5})
    seen = {}
    s.start(grid, arrays(w=[0.0, 0.0]), num_rounds=4, train_config=ConfigRecord({"role": "policy-gradient"}),
            evaluate_fn=lambda r, a: seen.setdefault(r, a["w"].numpy().tolist()) and None)
    # t=1  node 1 (v=0, δ=0): η=1, d=(1,0), θ1=(1,0); redispatched at v=1: η=1/2, θ̃ = θ1 + 1·(θ1−θ0) = (2,0)
    # t=2  node 1 (v=1, δ=0): η=1/2, d=(1,0), θ2=(2,0); redispatched at v=2: η=1/3, θ̃ = θ2 + 2·(θ2−θ1) = (4,0)
    # t=2.5 node 2 (v=0, δ=2): η_v=1 -> η=1, d=(0,1), θ3=(2,1); redispatched at v=3: θ̃ = θ3 + 3·(θ3−θ2) = (2,4)
    # t=3  node 1 (v=2, δ=1): η = 1/(3−1) = 1/2 (adaptive) or 1/3; d = (1−η)(0,1) + η(1,0); θ4 = θ3 + d/‖d‖
    assert grid.started_from() == [(1, [0, 0]), (2, [0, 0]), (1, [2, 0]), (1, [4, 0]), (2, [2, 4])]
    eta = 0.5 if delay_adaptive else 1 / 3
    d = np.array([eta, 1 - eta])
    expected4 = np.array([2.0, 1.0]) + d / np.linalg.norm(d)
    assert seen[1] == [1, 0] and seen[2] == [2, 0] and seen[3] == [2, 1]
    np.testing.assert_allclose(seen[4], expected4, rtol=1e-6)
    assert s.sim_time == 3.0 and [t for *_, t in s.staleness] == [0, 0, 2, 1]
    extra = s.rounds[4].extra
    assert extra["delay"] == 1 and extra["eta"] == pytest.approx(eta) and extra["eta-dispatch"] == pytest.approx(1 / 3)
    assert extra["lookahead-distance"] == pytest.approx(2.0) and extra["uploads-total"] == 4


def test_afedpg_takes_no_step_on_a_zero_gradient():
    # node 1 sends 0 (e.g. equal-length CartPole episodes): θ stays, step-norm 0; node 2's (0, 1) then moves it by α
    grid = gradient_grid({1: [0.0, 0.0], 2: [0.0, 1.0]})
    s = AFedPG(FedPG(), step_size=0.5, eta_exponent=0.0, jitter=0.0, speeds={1: 1.0, 2: 1.5})
    seen = {}
    s.start(grid, arrays(w=[1.0, 1.0]), num_rounds=2, train_config=ConfigRecord({"role": "policy-gradient"}),
            evaluate_fn=lambda r, a: seen.setdefault(r, a["w"].numpy().tolist()) and None)
    assert seen[1] == [1.0, 1.0] and s.rounds[1].extra["step-norm"] == 0.0
    assert seen[2] == [1.0, 1.5] and s.rounds[2].extra["step-norm"] == 0.5


def test_afedpg_step_length_decays_as_k_to_the_minus_q():
    # one node, gradient (1, 0) every time, η = 1 (p = 0): θ_k moves by α·k^(−q) along x; α = 1, q = 1/2
    grid = gradient_grid({1: [1.0, 0.0]})
    s = AFedPG(FedPG(), step_size=1.0, eta_exponent=0.0, step_exponent=0.5, jitter=0.0, speeds={1: 1.0})
    seen = {}
    s.start(grid, arrays(w=[0.0, 0.0]), num_rounds=3, train_config=ConfigRecord({"role": "policy-gradient"}),
            evaluate_fn=lambda r, a: seen.setdefault(r, a["w"].numpy().tolist()) and None)
    steps = [1.0, 2 ** -0.5, 3 ** -0.5]
    for k in (1, 2, 3):
        assert s.rounds[k].extra["step-norm"] == pytest.approx(steps[k - 1])
        np.testing.assert_allclose(seen[k], [sum(steps[:k]), 0.0], rtol=1e-6)
