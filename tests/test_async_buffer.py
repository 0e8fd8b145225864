"""AsyncBuffer: staleness weights, arrival order on the simulated clock, exact aggregation."""

import numpy as np
import pytest
from flwr.app import ConfigRecord

from strategies import AsyncBuffer, FedAvg
from strategies.async_buffer import client_speeds
from strategies.strategy_utils import staleness_weight
from tests.helpers import InstantGrid, arrays, reply


def test_staleness_weight_exact():
    assert staleness_weight(0, 0.5) == 1.0
    assert staleness_weight(3, 0.5) == pytest.approx(0.5)
    assert staleness_weight(1, 1.0) == 0.5
    assert staleness_weight(7, 0.0) == 1.0
    with pytest.raises(ValueError, match="staleness"):
        staleness_weight(-1, 0.5)


def test_client_speeds_are_seeded_heterogeneous_and_drawn_in_the_order_given():
    a, b = client_speeds([3, 1, 2], 1.0, seed=5), client_speeds([9, 7, 8], 1.0, seed=5)
    assert list(a.values()) == list(b.values()) and len(set(a.values())) == 3  # by rank, not by node id
    assert client_speeds([3, 1, 2], 1.0, seed=5) == a
    assert set(client_speeds([1, 2], 0.0, seed=5).values()) == {1.0}


def test_a_run_depends_on_the_partitions_not_on_the_node_ids_the_superlink_drew():
    """Two federations of the same three partitions under other node ids, listed by partition (as
    PartitionOrderGrid does): the same speeds, arrivals and models, partition for partition."""
    def run(node_of_partition):
        partition_of = {n: p for p, n in enumerate(node_of_partition)}
        grid = InstantGrid(node_of_partition, weight_client(lambda node, w: w + 10.0 ** partition_of[node]))
        strategy = AsyncBuffer(FedAvg(**AsyncBuffer.required_settings), buffer_size=2, speed_sigma=0.5, seed=0)
        evaluated = {}
        strategy.start(grid, arrays(w=[0.0]), num_rounds=4, train_config=ConfigRecord({}),
                       evaluate_fn=lambda r, a: evaluated.setdefault(r, float(a["w"].numpy()[0])) and None)
        arrivals = [(v, partition_of[n], tau) for v, n, tau in strategy.staleness]
        attempts = [(partition_of[m.metadata.dst_node_id], m.content["config"]["attempt"]) for m in grid.pushed]
        return evaluated, arrivals, attempts, strategy.sim_time

    first, second = run([30, 10, 20]), run([5, 99, 42])
    assert first == second
    assert len({p for _, p, _ in first[1]}) == 3  # every partition's update arrived


def weight_client(update):
    """A client that answers with `update(node, w)` as its new weights."""
    def respond(msg):
        node = msg.metadata.dst_node_id
        return reply(node, arrays(w=update(node, msg.content["arrays"]["w"].numpy())), 10, to=msg)
    return respond


def test_updates_arrive_in_simulated_order_and_are_staleness_weighted():
    # node 1 takes 1.0 per job and adds +1; node 2 takes 2.5 and adds +10; K = 2, a = 1
    grid = InstantGrid([1, 2], weight_client(lambda node, w: w + (1.0 if node == 1 else 10.0)))
    strategy = AsyncBuffer(FedAvg(**AsyncBuffer.required_settings), buffer_size=2, staleness_exponent=1.0, jitter=0.0, speeds={1: 1.0, 2: 2.5})
    evaluated = {}
    strategy.start(grid, arrays(w=[0.0]), num_rounds=2, train_config=ConfigRecord({}),
                   evaluate_fn=lambda r, a: evaluated.setdefault(r, float(a["w"].numpy()[0])) and None)
    # t=1, t=2: node 1 twice from v0 -> v1 = 0 + mean(1, 1) = 1
    # t=2.5: node 2 from v0 (τ=1, weight 1/2) adds 10; t=3: node 1 from v1 (τ=0) adds 1
    # v2 = 1 + (0.5 * 10 + 1 * 1) / 1.5 = 5
    assert evaluated == {0: 0.0, 1: 1.0, 2: 5.0}
    assert [(v, n, t) for v, n, t in strategy.staleness] == [(1, 1, 0), (1, 1, 0), (2, 2, 1), (2, 1, 0)]
    assert strategy.sim_time == 3.0
    assert strategy.rounds[2].extra["staleness"] == [1, 0]
    # the slow client really trained on the old model
    assert grid.started_from()[:3] == [(1, [0.0]), (2, [0.0]), (1, [0.0])]


def test_bad_reply_in_async_mode_is_dropped_and_the_run_goes_on():
    def client(node, w):
        return w + np.nan if node == 2 else w + 1.0

    grid = InstantGrid([1, 2], weight_client(client))
    strategy = AsyncBuffer(FedAvg(**AsyncBuffer.required_settings), buffer_size=1, jitter=0.0, speeds={1: 1.0, 2: 1.5})
    out = strategy.start(grid, arrays(w=[0.0]), num_rounds=3, train_config=ConfigRecord({}))
    assert float(out.arrays["w"].numpy()[0]) == 3.0
    assert any("NaN" in reason for log in strategy.rounds.values() for _, reason in log.dropped)


def test_round_logs_offset_and_checkpoint_state_are_the_wrapped_strategys():
    from strategies import FedAdagrad

    inner = FedAdagrad(**AsyncBuffer.required_settings)
    buffered = AsyncBuffer(inner, buffer_size=2)
    buffered.round_offset = 7
    assert inner.round_offset == 7 and buffered.round_offset == 7
    assert buffered.rounds is inner.rounds
    inner.m_t, inner.v_t = {"w": np.ones(2)}, {"w": np.full(2, 2.0)}
    buffered.sim_time, buffered.staleness = 12.5, [(1, 7, 0), (2, 2**64 - 5, 3)]  # Flower node ids are uint64
    state = buffered.state_dict()
    assert set(state) == {"m_t", "v_t", "async"}  # the moments and the clock reach the checkpoint
    fresh = FedAdagrad(**AsyncBuffer.required_settings)
    restored = AsyncBuffer(fresh, buffer_size=2)
    restored.load_state_dict(state)
    assert np.array_equal(fresh.v_t["w"], np.full(2, 2.0))
    assert (restored.sim_time, restored.staleness) == (12.5, [(1, 7, 0), (2, 2**64 - 5, 3)])
    assert restored.rng.random() == buffered.rng.random()  # the jitter stream continues where it stopped


def test_a_wrapped_strategy_without_the_required_settings_is_refused_naming_them():
    with pytest.raises(ValueError, match=r"AsyncBuffer needs the wrapped strategy built with .*min_train_nodes"):
        AsyncBuffer(FedAvg(), buffer_size=2)  # Flower's default samples at least 2 nodes: a one-node dispatch stalls
    with pytest.raises(TypeError, match="wraps a CheckedStrategy"):
        AsyncBuffer(object(), buffer_size=2)
