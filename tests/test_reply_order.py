"""PartitionOrderGrid: synchronous replies in partition order, whatever order they arrived in."""

import numpy as np
from flwr.app import ConfigRecord

from fedrl_app.protocol.metadata import ClientMetadata, encode_metadata
from fedrl_app.server.reply_order import PartitionOrderGrid
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
