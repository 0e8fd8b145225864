"""Byte accounting counts the serialized payloads that really travel."""

import numpy as np
from flwr.app import ConfigRecord, MetricRecord, RecordDict

import fedrl_app.server.metered_grid as metered_grid
import strategies.reply_guard as reply_guard
from fedrl_app.protocol.metadata import read_metadata
from fedrl_app.protocol.records import recorddict_nbytes
from fedrl_app.server.metered_grid import MeteredGrid
from fedrl_app.systems.profiles import SystemsModel
from strategies import FedAvg
from tests.helpers import arrays, error_reply, instruction, reply


class EchoGrid:
    """A Grid stand-in: every node answers with a fixed reply (or an error)."""

    def __init__(self, answers):
        self.answers = answers
        self.pushed = []

    def send_and_receive(self, messages, *, timeout=None):
        self.pushed = list(messages)
        return [self.answers[m.metadata.dst_node_id] for m in self.pushed]

    def get_node_ids(self):
        return list(self.answers)


def test_serialized_size_tracks_array_bytes():
    for n in (10, 1_000, 100_000):
        size = recorddict_nbytes(RecordDict({"arrays": arrays(w=np.zeros(n))}))
        assert 4 * n <= size <= 4 * n + 200, (n, size)


def test_metered_grid_counts_each_message_each_way():
    model = arrays(w=np.ones((100, 10)), b=np.ones(10))
    down = RecordDict({"arrays": model, "config": ConfigRecord({"lr": 0.1})})
    up_ok = reply(1, model, 50)
    grid = MeteredGrid(EchoGrid({1: up_ok, 2: error_reply(2), 3: up_ok}))
    msgs = [instruction(n) for n in (1, 2, 3)]
    for m in msgs:
        m.content = down
    replies = list(grid.send_and_receive(msgs, timeout=1))
    assert len(replies) == 3
    assert grid.downlink_bytes == 3 * recorddict_nbytes(down)
    assert grid.uplink_bytes == 2 * recorddict_nbytes(up_ok.content)  # the error reply carries no payload
    assert grid.downlink_messages == 3 and grid.uplink_messages == 3
    assert grid.downlink_bytes > 3 * 4 * 1010  # at least the float32 model, three times


def test_metrics_only_reply_is_small():
    content = RecordDict({"metrics": MetricRecord({"num-examples": 10, "accuracy": 0.5})})
    assert recorddict_nbytes(content) < 120


def test_the_clock_reads_a_reply_size_the_grid_measured_and_serializes_nothing_again(monkeypatch, tmp_path):
    model = arrays(w=np.ones((100, 10)))
    answer = reply(1, model, 50)
    answer.metadata.__dict__["_message_id"] = "reply-1"  # a pulled reply has an id; a fresh one has ""
    assert answer.metadata.message_id == "reply-1"
    grid = MeteredGrid(EchoGrid({1: answer}))
    (pulled,) = grid.send_and_receive([instruction(1)])
    calls = []
    monkeypatch.setattr(metered_grid, "recorddict_nbytes", lambda c: calls.append(c) or 0)
    monkeypatch.setattr(reply_guard, "recorddict_nbytes", lambda c: calls.append(c) or 0)
    assert grid.reply_nbytes(pulled) == recorddict_nbytes(answer.content) and calls == []
    s = FedAvg()
    s.configure_clock(SystemsModel("uniform", seed=0))
    s.configure_reply_sizes(grid.reply_nbytes)
    timing = s.client_time(pulled, read_metadata(pulled.content), remember=True)
    assert calls == [] and timing.upload_s > 0
    assert s.client_time(pulled, read_metadata(pulled.content)) is timing  # the async wrapper's, reused once
    assert s._timings == {}


def test_a_strategy_measuring_with_the_grid_can_still_be_copied():
    import copy
    import threading

    class LockedGrid:  # Flower's grids hold locks, which cannot be copied
        lock = threading.RLock()

        def reply_nbytes(self, msg):
            return 7

    s = FedAvg()
    s.configure_reply_sizes(LockedGrid().reply_nbytes)
    twin = copy.deepcopy(s)  # what Clustered does, once per cluster
    assert twin._reply_nbytes is s._reply_nbytes and twin._reply_nbytes(None) == 7
