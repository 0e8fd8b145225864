"""Aggregation math and reply checking, on tiny tensors with mock replies."""

import logging
import random

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord

from fedrl_app.protocol import keys
from fedrl_app.server.reply_order import PartitionOrderGrid
from fedrl_app.tasks.mnist import train
from strategies import FedAdagrad, FedAvg, FedProx, Scaffold
from strategies.scaffold import scaffold_update
from tests.helpers import FakeGrid, arrays, error_reply, reply

GLOBAL = arrays(w=[[0.0, 0.0]], b=[0.0])


def _configured(strategy, nodes=(1, 2, 3)):
    list(strategy.configure_train(1, GLOBAL, ConfigRecord({}), FakeGrid(list(nodes))))
    return strategy


def test_fedavg_weights_by_examples():
    s = _configured(FedAvg())
    out, _ = s.aggregate_train(1, [reply(1, arrays(w=[[1.0, 2.0]], b=[3.0]), 100),
                                   reply(2, arrays(w=[[4.0, 8.0]], b=[0.0]), 300)])
    np.testing.assert_allclose(out["w"].numpy(), [[3.25, 6.5]])
    np.testing.assert_allclose(out["b"].numpy(), [0.75])


def test_bad_replies_are_dropped_with_a_log_line_and_the_round_goes_on(caplog):
    s = _configured(FedAvg())
    hostile = ConfigRecord({keys.METADATA_PAYLOAD: b"cos\nsystem\n(S'echo pwned'\ntR."})
    replies = [
        reply(1, arrays(w=[[1.0, 1.0]], b=[1.0]), 10),
        reply(2, arrays(w=[[np.nan, 1.0]], b=[1.0]), 10),                    # NaN
        reply(3, arrays(w=[[1.0, 1.0, 1.0]], b=[1.0]), 10),                  # wrong shape
        reply(4, arrays(w=[[9.0, 9.0]], b=[9.0]), 10, metadata=hostile),     # code in metadata
        reply(5, arrays(w=[[1e9, 1.0]], b=[1.0]), 10),                       # absurd norm
        reply(6, arrays(w=[[9.0, 9.0]], b=[9.0]), 0),                        # no examples
        error_reply(7, "ClientApp raised ZeroDivisionError"),
        reply(8, arrays(w=[[3.0, 3.0]], b=[3.0]), 30),
    ]
    with caplog.at_level(logging.WARNING):
        out, _ = s.aggregate_train(1, replies)
    np.testing.assert_allclose(out["w"].numpy(), [[2.5, 2.5]])  # (1*10 + 3*30) / 40
    dropped = dict(s.rounds[1].dropped)
    assert sorted(dropped) == [2, 3, 4, 5, 6, 7]
    assert "NaN" in dropped[2] and "expected float32[1, 2]" in dropped[3]
    assert "'os.system'" in dropped[4] and "num-examples" in dropped[6] and "ZeroDivisionError" in dropped[7]
    assert sum("dropped reply from node" in r.getMessage() for r in caplog.records) == 6
    assert [r.node_id for r in s.rounds[1].reports] == [1, 8]


def test_all_replies_bad_keeps_the_model():
    s = _configured(FedAvg())
    out, metrics = s.aggregate_train(1, [error_reply(1), error_reply(2)])
    assert out is None and metrics is None


def test_fedprox_sends_mu_and_the_lr_schedule():
    s = FedProx(proximal_mu=0.3)
    s.configure_schedule(lr=0.2, lr_decay_factor=0.5, lr_decay_every=5)
    shared = ConfigRecord({"batch-size": 8})
    msgs = list(s.configure_train(10, GLOBAL, shared, FakeGrid([1, 2])))
    config = msgs[0].content["config"]
    assert config["proximal-mu"] == 0.3 and config["lr"] == pytest.approx(0.05) and config["server-round"] == 10
    assert dict(shared) == {"batch-size": 8}  # shared config never mutated


def test_round_offset_shifts_rounds_after_resume():
    s = FedAvg()
    s.configure_schedule(lr=0.2, lr_decay_factor=0.5, lr_decay_every=5, round_offset=7)
    msgs = list(s.configure_train(3, GLOBAL, ConfigRecord({}), FakeGrid([1, 2])))
    assert msgs[0].content["config"]["server-round"] == 10
    assert msgs[0].content["config"]["lr"] == pytest.approx(0.05)


def test_scaffold_server_update_exact():
    x = {"w": np.array([1.0, 1.0], np.float32)}
    c = {"w": np.array([0.5, 0.0], np.float32)}
    ys = [{"w": np.array([2.0, 0.0], np.float32)}, {"w": np.array([0.0, 3.0], np.float32)}]
    dcs = [{"w": np.array([1.0, 1.0], np.float32)}, {"w": np.array([3.0, -1.0], np.float32)}]
    x_new, c_new = scaffold_update(x, c, ys, dcs, global_lr=1.0, num_total_nodes=4)
    np.testing.assert_allclose(x_new["w"], [1.0, 1.5])  # x + mean([1, -1], [-1, 2])
    np.testing.assert_allclose(c_new["w"], [0.5 + 0.5 * 2.0, 0.0])  # c + |S|/N * mean(dc)


def test_scaffold_strategy_sends_control_and_aggregates_deltas():
    s = Scaffold()
    msgs = list(s.configure_train(1, GLOBAL, ConfigRecord({}), FakeGrid([1, 2, 3, 4])))
    assert "control" in msgs[0].content.array_records
    np.testing.assert_array_equal(msgs[0].content["control"]["w"].numpy(), [[0.0, 0.0]])
    replies = [reply(i, arrays(w=[[2.0 * i, 0.0]], b=[0.0]), 10,
                     extra={"control-delta": arrays(w=[[1.0, 1.0]], b=[float(i)])}) for i in (1, 2)]
    out, _ = s.aggregate_train(1, replies)
    np.testing.assert_allclose(out["w"].numpy(), [[3.0, 0.0]])
    np.testing.assert_allclose(s.control["w"], [[0.5, 0.5]])  # 2/4 * mean([1,1],[1,1])
    np.testing.assert_allclose(s.control["b"], [0.75])        # 2/4 * mean(1, 2)
    # a reply without its control delta is dropped, not aggregated
    list(s.configure_train(2, out, ConfigRecord({}), FakeGrid([1, 2, 3, 4])))
    s.aggregate_train(2, [reply(1, arrays(w=[[2.0, 0.0]], b=[0.0]), 10)])
    assert "no ArrayRecord 'control-delta'" in s.rounds[2].dropped[0][1]


def test_fedadagrad_state_round_trips():
    s = _configured(FedAdagrad(eta=0.1, eta_l=0.1, tau=0.01))
    s.aggregate_train(1, [reply(1, arrays(w=[[1.0, -1.0]], b=[0.5]), 10)])
    state = s.state_dict()
    fresh = FedAdagrad(eta=0.1, eta_l=0.1, tau=0.01)
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(fresh.v_t["w"], s.v_t["w"])
    # first step: x + eta * d / (|d| + tau) with m_t = d (beta_1 = 0)
    np.testing.assert_allclose(s.v_t["w"], [[1.0, 1.0]])


def _tiny_problem():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    x = torch.randn(8, 3)
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    return net, (x, y)


def _manual_sgd(net, data, lr, steps, mu=0.0, correction=None):
    x, y = data
    params = [p.detach().clone().requires_grad_(True) for p in net.parameters()]
    anchor = [p.detach().clone() for p in params]
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(x @ params[0].T + params[1], y)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(params, grads)):
                g = g + mu * (p - anchor[i])
                if correction is not None:
                    g = g + correction[i]
                p -= lr * g
    return [p.detach() for p in params]


def test_fedprox_client_step_matches_the_proximal_gradient():
    net, data = _tiny_problem()
    expected = _manual_sgd(net, data, lr=0.5, steps=3, mu=2.0)
    train(net, data, epochs=3, batch_size=8, lr=0.5, proximal_mu=2.0)
    for p, e in zip(net.parameters(), expected):
        torch.testing.assert_close(p.detach(), e)


def test_scaffold_client_step_adds_the_control_correction():
    net, data = _tiny_problem()
    correction = [torch.full_like(p, 0.1) for p in net.parameters()]
    expected = _manual_sgd(net, data, lr=0.5, steps=2, correction=correction)
    train(net, data, epochs=2, batch_size=8, lr=0.5, control_correction=correction)
    for p, e in zip(net.parameters(), expected):
        torch.testing.assert_close(p.detach(), e)


def test_norm_bounding_of_model_replies_is_relative_to_the_model_sent():
    s = FedAvg(fraction_train=1.0)
    s.configure_update_bounds(max_update_norm=1.0)
    msgs = list(s.configure_train(1, arrays(w=[[0.0, 0.0]], b=[0.0]), ConfigRecord({}), FakeGrid([1, 2])))
    to = {m.metadata.dst_node_id: m for m in msgs}
    out, _ = s.aggregate_train(1, [reply(1, arrays(w=[[3.0, 4.0]], b=[0.0]), 10, to=to[1]),   # norm 5: to 1
                                   reply(2, arrays(w=[[0.3, 0.4]], b=[0.0]), 10, to=to[2])])  # norm 0.5: kept
    np.testing.assert_allclose(out["w"].numpy(), [[(0.6 + 0.3) / 2, (0.8 + 0.4) / 2]], rtol=1e-6)
    assert s.rounds[1].extra["updates-norm-bounded"] == 1


def test_aggregation_does_not_depend_on_the_order_replies_arrive_in():
    rng = np.random.default_rng(0)
    updates = {n: (rng.normal(size=(1, 2)) * 10.0 ** rng.integers(-3, 3)).astype(np.float32) for n in range(1, 8)}

    def run(order):
        s = _configured(FedAvg())
        out, _ = s.aggregate_train(1, [reply(n, arrays(w=updates[n], b=[float(n)]), 10 * n + 3) for n in order])
        return out["w"].numpy().tobytes(), out["b"].numpy().tobytes()

    orders = [list(range(1, 8)), list(range(7, 0, -1)), [3, 1, 7, 5, 2, 6, 4]]
    assert len({run(o) for o in orders}) == 1  # bit for bit: the sum runs in partition order


def _sampled_partitions(seed, node_ids_of_partition, rounds=6, round_offset=0):
    """The partitions FedAvg (fraction-train 0.5) sends to each round, over nodes with the given ids (after a resume
    at `round_offset`: Flower's rounds 1.. are the true rounds round_offset + 1..)."""
    s = FedAvg(fraction_train=0.5, min_available_nodes=1, min_train_nodes=1)
    s.configure_schedule(lr=0.1, lr_decay_factor=1.0, lr_decay_every=1, round_offset=round_offset)
    s.configure_sampling(seed)
    partition_of = {n: p for p, n in enumerate(node_ids_of_partition)}
    grid = PartitionOrderGrid(FakeGrid(node_ids_of_partition))
    grid.partitions = dict(partition_of)  # as if each node had answered the partition query
    return [sorted(partition_of[m.metadata.dst_node_id] for m in s.configure_train(r, GLOBAL, ConfigRecord({}), grid))
            for r in range(1, rounds + 1)]


def test_seeded_sampling_picks_the_same_partitions_whatever_the_node_ids_and_leaves_random_alone():
    rng = np.random.default_rng(0)
    ids_a, ids_b = [int(x) for x in rng.integers(1, 2**62, 8)], [int(x) for x in rng.integers(1, 2**62, 8)]
    random.seed(123)
    before = random.getstate()
    first = _sampled_partitions(7, ids_a)
    assert random.getstate() == before  # Flower's draw came from the seeded stream, not the global one
    assert first == _sampled_partitions(7, ids_b) and all(len(p) == 4 for p in first)
    assert len({tuple(p) for p in first}) > 1  # a sample per round, not one fixed subset
    assert _sampled_partitions(8, ids_a) != first
    # resumed at round 4: rounds 4..6 are sampled as the uninterrupted run sampled them
    assert _sampled_partitions(7, ids_b, rounds=3, round_offset=3) == first[3:]


def test_unseeded_sampling_draws_from_the_global_random():
    ids = list(range(10, 18))
    random.seed(5)
    first = _sampled_partitions(None, ids, rounds=3)
    random.seed(5)
    assert _sampled_partitions(None, ids, rounds=3) == first
    random.seed(6)
    assert _sampled_partitions(None, ids, rounds=3) != first
