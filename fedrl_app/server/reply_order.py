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
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
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


def queried_partition(msg: Message) -> int | None:
    """The partition id a query reply reports, or None for an error reply or anything but one non-negative
    integer under `keys.PARTITION_ID` in its metrics (the reply is untrusted: it only orders the node list)."""
    if msg.has_error() or keys.METRICS not in msg.content.metric_records:
        return None
    value = msg.content.metric_records[keys.METRICS].get(keys.PARTITION_ID)
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
    """

    def __init__(self, grid: Grid, query_timeout: float = 60.0) -> None:
        super().__init__(grid)
        self.query_timeout = query_timeout
        self.partitions: dict[int, int] = {}  # node id -> the partition it reported (first report kept)
        self._silent: set[int] = set()       # nodes that did not answer the query

    def get_node_ids(self) -> list[int]:
        """The wrapped grid's nodes, sorted by partition (ties and silent nodes by node id)."""
        nodes = list(self._grid.get_node_ids())
        unknown = [n for n in nodes if n not in self.partitions and n not in self._silent]
        if unknown:
            self._ask_partitions(unknown)
        return sorted(nodes, key=lambda n: (0, self.partitions[n], n) if n in self.partitions else (1, 0, n))

    def _ask_partitions(self, node_ids: list[int]) -> None:
        query = RecordDict({keys.CONFIG: ConfigRecord({keys.QUERY: keys.PARTITION_ID})})
        asked = [Message(query, dst_node_id=n, message_type=MessageType.QUERY) for n in node_ids]
        for msg in self._grid.send_and_receive(asked, timeout=self.query_timeout):
            pid = queried_partition(msg)
            if pid is not None:
                self.partitions.setdefault(msg.metadata.src_node_id, pid)
        self._silent.update(n for n in node_ids if n not in self.partitions)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Exchange through the wrapped Grid, then sort the replies (stable: equal keys keep arrival order)."""
        keyed = sorted(((partition_order_key(msg), msg) for msg in self._grid.send_and_receive(messages, timeout=timeout)),
                       key=lambda pair: pair[0])  # each reply's metadata decoded once
        for (group, pid), msg in keyed:
            if group == 0:
                self.partitions.setdefault(msg.metadata.src_node_id, pid)
        return [msg for _, msg in keyed]
