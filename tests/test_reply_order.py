"""PartitionOrderGrid: nodes listed, and synchronous replies returned, in partition order."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fedrl_app.protocol.metadata import ClientMetadata, encode_metadata
from fedrl_app.server.reply_order import PartitionOrderGrid, queried_partition
from strategies.strategy_utils import SubsetGrid, node_partitions
from tests.helpers import arrays, error_reply, instruction, reply


class ArrivalGrid:
    """A Grid stand-in that answers in a fixed arrival order, and counts pushes and pulls."""

    def __init__(self, arrivals):
        self.arrivals = arrivals
        self.pulled = []

    def send_and_receive(self, messages, *, timeout=None):
        list(messages)
        return list(self.arrivals)

    def pull_messages(self, message_ids):
        self.pulled.append(list(message_ids))
        return list(self.arrivals)


def _reply(node_id: int, partition_id: int):
    meta = encode_metadata(ClientMetadata(partition_id=partition_id, num_examples=1, train_time_s=0.0))
    return reply(node_id, arrays(w=np.zeros(1)), 1, metadata=meta)


def test_replies_come_back_sorted_by_partition_errors_and_undecodable_last():
    undecodable = reply(5, arrays(w=np.zeros(1)), 1, metadata=ConfigRecord({"payload": b"not a pickle"}))
    arrivals = [_reply(900, 2), error_reply(7), _reply(40, 0), undecodable, _reply(3, 1)]
    grid = PartitionOrderGrid(ArrivalGrid(arrivals))
    got = list(grid.send_and_receive([instruction(n) for n in (900, 7, 40, 5, 3)], timeout=1))
    assert [m.metadata.src_node_id for m in got] == [40, 3, 900, 5, 7]  # partitions 0, 1, 2; then nodes 5, 7


def test_equal_partitions_keep_their_arrival_order_and_pulls_pass_through():
    arrivals = [_reply(8, 1), _reply(2, 1), _reply(6, 0)]
    inner = ArrivalGrid(arrivals)
    grid = PartitionOrderGrid(inner)
    assert [m.metadata.src_node_id for m in grid.send_and_receive([])] == [6, 8, 2]
    # asynchronous strategies model the arrival order: pull_messages is the wrapped grid's, unsorted
    assert [m.metadata.src_node_id for m in grid.pull_messages(["a"])] == [8, 2, 6] and inner.pulled == [["a"]]


class QueryGrid:
    """A Grid stand-in whose nodes answer the partition query with `answers[node]` (a missing node is silent),
    and with `num_partitions[node]` as their federation size where that is given."""

    def __init__(self, answers: dict, extra_nodes=(), num_partitions=None):
        self.answers, self.extra_nodes, self.asked = answers, list(extra_nodes), []
        self.num_partitions = num_partitions or {}

    def _answer(self, node):
        metrics = {"partition-id": self.answers[node]}
        if node in self.num_partitions:
            metrics["num-partitions"] = self.num_partitions[node]
        return MetricRecord(metrics)

    def get_node_ids(self):
        return list(self.answers) + self.extra_nodes

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        self.asked.append([m.metadata.dst_node_id for m in messages])
        assert all(m.metadata.message_type == "query" for m in messages)
        assert all(m.content["config"]["query"] == "partition-id" for m in messages)
        return [Message(RecordDict({"metrics": self._answer(m.metadata.dst_node_id)}), reply_to=m)
                for m in messages if m.metadata.dst_node_id in self.answers]


def test_nodes_are_listed_by_the_partition_they_report_each_asked_once_silent_ones_last():
    inner = QueryGrid({900: 2, 40: 0, 3: 1}, extra_nodes=[77, 5])
    grid = PartitionOrderGrid(inner)
    assert grid.get_node_ids() == [40, 3, 900, 5, 77]
    assert grid.get_node_ids() == [40, 3, 900, 5, 77]
    assert inner.asked == [[900, 40, 3, 77, 5]]  # one query for the unknown nodes; neither answers nor silence re-asked


def test_strategies_read_the_partitions_through_any_view_of_the_grid():
    grid = PartitionOrderGrid(QueryGrid({900: 2, 40: 0, 3: 1}, extra_nodes=[77]))
    grid.get_node_ids()
    assert node_partitions(grid) == {40: 0, 3: 1, 900: 2}  # the silent node 77 has none
    assert node_partitions(SubsetGrid(grid, [900, 77])) == {900: 2}
    assert node_partitions(QueryGrid({1: 0})) == {}  # a plain grid knows node ids only


def test_a_node_known_from_its_train_reply_is_not_asked():
    inner = QueryGrid({8: 1, 6: 0})
    grid = PartitionOrderGrid(inner)
    grid._grid = ArrivalGrid([_reply(8, 1)])
    grid.send_and_receive([])
    grid._grid = inner
    assert grid.get_node_ids() == [6, 8] and inner.asked == [[6]]


@pytest.mark.parametrize("value", [-1, 1.0, [1]])
def test_a_query_reply_that_is_not_a_non_negative_integer_is_ignored(value):
    inner = QueryGrid({9: value, 4: 0})
    grid = PartitionOrderGrid(inner)
    assert grid.get_node_ids() == [4, 9] and grid.partitions == {4: 0}
    assert queried_partition(error_reply(9)) is None


class ConnectingGrid(QueryGrid):
    """A QueryGrid whose nodes connect over time: `connected[i]` is the node list of the i-th listing (the last
    one repeats); node id % 10 is each node's partition."""

    def __init__(self, connected: list[list[int]], num_partitions: dict):
        super().__init__({n: n % 10 for nodes in connected for n in nodes}, num_partitions=num_partitions)
        self.connected, self.listings = connected, 0

    def get_node_ids(self):
        self.listings += 1
        return list(self.connected[min(self.listings, len(self.connected)) - 1])


class FakeClock:
    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def _connecting(connected, num_partitions, timeout=60.0):
    clock = FakeClock()
    grid = PartitionOrderGrid(ConnectingGrid(connected, num_partitions), federation_timeout=timeout,
                              poll_interval=1.0, clock=lambda: clock.now, sleep=clock.sleep)
    return grid, clock


def test_the_first_listing_waits_for_as_many_nodes_as_the_clients_report_partitions():
    # node id % 10 is the partition: partition 0's node (30) connects third, after two polls
    grid, clock = _connecting([[11, 22], [11, 22], [11, 22, 30]], {11: 3, 22: 3, 30: 3})
    assert grid.federation_size is None  # nothing asked before the first listing
    assert grid.get_node_ids() == [30, 11, 22] and clock.sleeps == [1.0, 1.0] and grid.federation_size == 3
    assert grid._grid.asked == [[11, 22], [30]]  # each node asked once, as it arrives
    # later listings do not wait: a node that drops out does not stall a round
    grid._grid.connected = [[11, 22]]
    grid._grid.listings = 0
    assert grid.get_node_ids() == [11, 22] and clock.sleeps == [1.0, 1.0]


def test_after_the_timeout_the_run_starts_with_the_nodes_there_are():
    grid, clock = _connecting([[11, 22]], {11: 3, 22: 3}, timeout=5.0)
    assert grid.get_node_ids() == [11, 22]
    assert clock.now == 5.0 and clock.sleeps == [1.0] * 5


def test_the_federation_size_is_the_most_common_report_so_one_liar_cannot_stall_the_start():
    grid, clock = _connecting([[10, 21, 32, 43]], {10: 4, 21: 4, 32: 4, 43: 1000})
    assert grid.get_node_ids() == [10, 21, 32, 43] and grid.federation_size == 4 and clock.sleeps == []


def test_with_no_node_connected_the_first_listing_waits_for_one():
    grid, clock = _connecting([[], [], [21, 10]], {10: 2, 21: 2})
    assert grid.get_node_ids() == [10, 21] and clock.sleeps == [1.0, 1.0] and grid.federation_size == 2
