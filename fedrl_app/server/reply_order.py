"""PartitionOrderGrid: a Grid whose synchronous replies come back in partition order, whatever order they arrive in.

Flower returns the replies of `send_and_receive` in the order they arrive, and node ids are random.
Every sum over replies (a weighted average, a trust-weighted mix, the order in which shared
experience enters the server's buffer) would then add in a different order when arrivals do, and a
float sum's last bit depends on its order; in RL that bit grows into a different run. Sorting by the
partition each client reports makes the order a function of the clients alone. (In the local
simulation the replies were seen to arrive in partition order already; what kept two RL runs of one
seed apart there was the episode cache, fixed by `fedrl_app.tasks.gym_rl.EpisodeLog`. Over a real
network, arrival order follows link and device speed.)
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message

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


class PartitionOrderGrid(GridView):
    """Wrap a Grid; return the replies of `send_and_receive` sorted by `partition_order_key`.

    `push_messages` / `pull_messages` (the asynchronous strategies) pass through unchanged: there the
    order of arrivals is what the strategy models.
    """

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Exchange through the wrapped Grid, then sort the replies (stable: equal keys keep arrival order)."""
        return sorted(self._grid.send_and_receive(messages, timeout=timeout), key=partition_order_key)
