"""PartitionOrderGrid: a Grid that lists its nodes, and returns synchronous replies, in partition order.

Flower returns the replies of `send_and_receive` in the order they arrive, and node ids are random.
Every sum over replies (a weighted average, a trust-weighted mix, the order in which shared
experience enters the server's buffer) would then add in a different order when arrivals do, and a
float sum's last bit depends on its order; in RL that bit grows into a different run. Sorting by the
partition each client reports makes the order a function of the clients alone. (In the local
simulation the replies were seen to arrive in partition order already; what kept two RL runs of one
seed apart there was the episode cache, fixed by `fedrl_app.tasks.gym_rl.EpisodeLog`. Over a real
network, arrival order follows link and device speed.)

The node list is ordered the same way, so that a seeded sample of it (`strategies.strategy_utils.
seeded_sampling`, fraction-train < 1) picks the same partitions in two runs of a seed: Flower draws
from `get_node_ids()`, whose order follows the random node ids the SuperLink assigns. A node the
grid has not heard from yet is asked its partition once, with a query message. What it learned is
its `partitions` dict (node id → partition), which strategies read through any view of the grid
(`strategies.strategy_utils.node_partitions`): the clustering wrapper stores its clusters by partition,
so that a resumed run, whose nodes have new ids, finds them.

A seeded sample is the same only over the same list, and Flower starts a round once `min_available_nodes`
(2 by default) are connected. SuperNodes connect one by one, and even the simulation starts its ServerApp
beside the node registration: on a loaded machine (a CI run beside a benchmark) one of two runs of a seed
drew another round-1 sample of 2 of 3 nodes while rounds 2-4 agreed, as a list still short of a node
does. So the first listing waits, up to `federation_timeout`, for as many nodes as the clients say
there are partitions (each query reply reports its node's `num-partitions`; the most common report counts,
so one lying client cannot set it). Only the first: a node that drops out later does not stall a round.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from logging import INFO, WARNING

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from fedrl_app.protocol import keys
from fedrl_app.protocol.metadata import MetadataError, read_metadata
from strategies.strategy_utils import GridView


def partition_order_key(msg: Message) -> tuple[int, int]:
    """(0, partition id) for a reply whose metadata decodes; (1, source node id) for an error reply or one
    whose metadata does not decode (the strategy refuses those anyway; they go last)."""
    if not msg.has_error():
        try:
            return 0, read_metadata(msg.content).partition_id
        except MetadataError:
            pass
    return 1, msg.metadata.src_node_id


def queried_partition(msg: Message, key: str = keys.PARTITION_ID) -> int | None:
    """The partition id (or, with `key = keys.NUM_PARTITIONS`, the federation size) a query reply reports, or
    None for an error reply or anything but one non-negative integer under `key` in its metrics (the reply is
    untrusted: it only orders the node list and says how many nodes to wait for)."""
    if msg.has_error() or keys.METRICS not in msg.content.metric_records:
        return None
    value = msg.content.metric_records[keys.METRICS].get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


class PartitionOrderGrid(GridView):
    """Wrap a Grid; list its nodes and return the replies of `send_and_receive` in partition order.

    `push_messages` / `pull_messages` (the asynchronous strategies) pass through unchanged: there the
    order of arrivals is what the strategy models.

    Parameters
    ----------
    grid : Grid
        The grid to wrap.
    query_timeout : float (default: 60.0)
        Seconds to wait for the partition query's replies; a node that does not answer is not asked again
        and is listed after the others, by node id.
    federation_timeout : float (default: 60.0)
        Seconds the first listing waits for the federation the nodes report (`federation_size`) to connect
        and answer; after it, the run starts with the nodes there are, and says so.
    poll_interval : float (default: 1.0)
        Seconds between two looks at the wrapped grid's node list while waiting (Flower's own wait polls
        once a second).
    """

    def __init__(self, grid: Grid, query_timeout: float = 60.0, federation_timeout: float = 60.0,
                 poll_interval: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(grid)
        self.query_timeout = query_timeout
        self.federation_timeout = federation_timeout
        self.poll_interval = poll_interval
        self._clock, self._sleep = clock, sleep
        self.partitions: dict[int, int] = {}  # node id -> the partition it reported (first report kept)
        self._silent: set[int] = set()       # nodes that did not answer the query
        self._sizes: dict[int, int] = {}      # node id -> the number of partitions it reported
        self._waited = False

    @property
    def federation_size(self) -> int | None:
        """The number of partitions the nodes report (the most common report, the larger on a tie; None: no
        node reported one)."""
        if not self._sizes:
            return None
        counts = Counter(self._sizes.values())
        return max(counts, key=lambda size: (counts[size], size))

    def get_node_ids(self) -> list[int]:
        """The wrapped grid's nodes, sorted by partition (ties and silent nodes by node id); the first call
        waits for the federation (`federation_timeout`)."""
        nodes = self._listed()
        if not self._waited:
            self._waited = True
            nodes = self._wait_for_federation(nodes)
        return sorted(nodes, key=lambda n: (0, self.partitions[n], n) if n in self.partitions else (1, 0, n))

    def _listed(self) -> list[int]:
        nodes = list(self._grid.get_node_ids())
        unknown = [n for n in nodes if n not in self.partitions and n not in self._silent]
        if unknown:
            self._ask_partitions(unknown)
        return nodes

    def _wait_for_federation(self, nodes: list[int]) -> list[int]:
        def missing(nodes: list[int]) -> int:
            known = {self.partitions[n] for n in nodes if n in self.partitions}
            size = self.federation_size
            if size is None:  # no node has answered yet (or none reports a size): wait for the first
                return 0 if known else 1
            return size - len(known)

        if missing(nodes) <= 0:
            return nodes
        log(INFO, "fedrl: %d nodes connected, %d partitions reported; waiting up to %.0f s for the rest",
            len(nodes), self.federation_size or 0, self.federation_timeout)
        deadline = self._clock() + self.federation_timeout
        while missing(nodes) > 0 and self._clock() < deadline:
            self._sleep(self.poll_interval)
            nodes = self._listed()
        if missing(nodes) > 0:
            log(WARNING, "fedrl: %d partitions' nodes still missing after %.0f s (%d reported); starting "
                "without them (a seeded sample of nodes will not repeat in another run)", missing(nodes),
                self.federation_timeout, self.federation_size or 0)
        return nodes

    def _ask_partitions(self, node_ids: list[int]) -> None:
        query = RecordDict({keys.CONFIG: ConfigRecord({keys.QUERY: keys.PARTITION_ID})})
        asked = [Message(query, dst_node_id=n, message_type=MessageType.QUERY) for n in node_ids]
        for msg in self._grid.send_and_receive(asked, timeout=self.query_timeout):
            pid = queried_partition(msg)
            if pid is not None:
                self.partitions.setdefault(msg.metadata.src_node_id, pid)
                size = queried_partition(msg, keys.NUM_PARTITIONS)
                if size is not None:
                    self._sizes.setdefault(msg.metadata.src_node_id, size)
        self._silent.update(n for n in node_ids if n not in self.partitions)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Exchange through the wrapped Grid, then sort the replies (stable: equal keys keep arrival order)."""
        keyed = sorted(((partition_order_key(msg), msg) for msg in self._grid.send_and_receive(messages, timeout=timeout)),
                       key=lambda pair: pair[0])  # each reply's metadata decoded once
        for (group, pid), msg in keyed:
            if group == 0:
                self.partitions.setdefault(msg.metadata.src_node_id, pid)
        return [msg for _, msg in keyed]
