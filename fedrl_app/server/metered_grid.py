"""MeteredGrid: a Grid that counts the bytes of every message sent to and received from clients."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

from fedrl_app.protocol.records import recorddict_nbytes
from strategies.strategy_utils import GridView


class MeteredGrid(GridView):
    """Wrap a Grid; add the serialized size of each message's content to byte counters.

    Downlink counts every message pushed (one copy per destination node, as on the
    wire); uplink counts every reply pulled, error replies included. Works for the
    synchronous `send_and_receive` and for `push_messages` / `pull_messages`.
    """

    def __init__(self, grid: Grid) -> None:
        super().__init__(grid)
        self.downlink_bytes = 0
        self.uplink_bytes = 0
        self.downlink_messages = 0
        self.uplink_messages = 0
        self._latest_reply_sizes: dict[str, int] = {}  # message id -> bytes, of the latest batch pulled

    def _count_down(self, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        sizes: dict[int, int] = {}  # strategies reuse one RecordDict for every node
        for msg in messages:
            key = id(msg.content)
            if key not in sizes:
                sizes[key] = recorddict_nbytes(msg.content)
            self.downlink_bytes += sizes[key]
        self.downlink_messages += len(messages)
        return messages

    def _count_up(self, replies: Iterable[Message]) -> list[Message]:
        replies = list(replies)
        self._latest_reply_sizes = {}  # only the latest batch: the strategy reads it before the next pull
        for msg in replies:
            if not msg.has_error():
                self._latest_reply_sizes[msg.metadata.message_id] = size = recorddict_nbytes(msg.content)
                self.uplink_bytes += size
        self.uplink_messages += len(replies)
        return replies

    def reply_nbytes(self, msg: Message) -> int:
        """The serialized size of a reply this grid pulled in its latest batch (measured once, here), else
        measured now."""
        size = self._latest_reply_sizes.get(msg.metadata.message_id) if msg.metadata.message_id else None
        return size if size is not None else recorddict_nbytes(msg.content)

    # --- the Grid calls that move messages; everything else is the wrapped Grid's (GridView) -------
    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Count, then push."""
        return self._grid.push_messages(self._count_down(messages))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Pull, then count."""
        return self._count_up(self._grid.pull_messages(message_ids))

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Count both ways around the synchronous exchange."""
        return self._count_up(self._grid.send_and_receive(self._count_down(messages), timeout=timeout))
