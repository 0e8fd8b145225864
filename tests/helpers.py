"""Mock client replies for strategy tests (the way Flower's own strategy tests build them)."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from fedrl_app.protocol import keys
from fedrl_app.protocol.metadata import ClientMetadata, encode_metadata


def arrays(**named: np.ndarray) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, dtype=np.float32)) for k, v in named.items()})


def instruction(node_id: int) -> Message:
    return Message(RecordDict(), dst_node_id=node_id, message_type="train")


def reply(node_id: int, weights: ArrayRecord, num_examples: int, *, metadata: ConfigRecord | None = None,
          extra: dict | None = None, metrics: dict | None = None, to: Message | None = None) -> Message:
    meta = metadata if metadata is not None else encode_metadata(
        ClientMetadata(partition_id=node_id, num_examples=num_examples, train_time_s=0.1, epoch_losses=[0.5]))
    content = RecordDict({
        "arrays": weights,
        "metrics": MetricRecord(metrics if metrics is not None else {"num-examples": num_examples, "loss": 0.5}),
        keys.METADATA: meta,
    })
    for key, value in (extra or {}).items():
        content[key] = value
    return Message(content, reply_to=to if to is not None else instruction(node_id))


def error_reply(node_id: int, reason: str = "client crashed") -> Message:
    return Message(Error(code=0, reason=reason), reply_to=instruction(node_id))


class FakeGrid:
    """Just enough Grid for configure_train: a fixed set of node ids."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self):
        return list(self.node_ids)


class InstantGrid:
    """Push/pull fake: each pushed message is answered at once by `respond(msg)`; replies wait to be pulled.

    `pushed` keeps every message sent, in order, so tests can check what each job started from.
    """

    def __init__(self, node_ids, respond):
        self.node_ids, self.respond = list(node_ids), respond
        self.ready: dict[str, Message] = {}
        self.pushed: list[Message] = []

    def get_node_ids(self):
        return list(self.node_ids)

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            msg_id = f"m{len(self.pushed) + 1}"
            msg.metadata.__dict__["_message_id"] = msg_id  # the SuperLink would assign it
            self.pushed.append(msg)
            self.ready[msg_id] = self.respond(msg)
            ids.append(msg_id)
        return ids

    def pull_messages(self, message_ids):
        return [self.ready.pop(i) for i in list(message_ids) if i in self.ready]

    def started_from(self, key: str = "w") -> list[tuple[int, list[float]]]:
        """(node, model it was sent) for every pushed message."""
        return [(m.metadata.dst_node_id, m.content["arrays"][key].numpy().tolist()) for m in self.pushed]
