"""What every client role shares: the node's partition, and attaching the metadata to a reply."""

from __future__ import annotations

from flwr.app import Context, RecordDict

from fedrl_app.protocol import keys
from fedrl_app.protocol.metadata import ClientMetadata, encode_metadata


def partition(context: Context) -> tuple[int, int]:
    """(partition id, number of partitions) from the node config; a clear error if the SuperNode lacks them."""
    try:
        return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    except KeyError as err:
        raise ValueError(f"node config lacks {err}; start the SuperNode with "
                         "--node-config 'partition-id=N num-partitions=M'") from None


def attach_metadata(content: RecordDict, meta: ClientMetadata) -> None:
    """Encode `meta` (validated first) into the reply's metadata record."""
    content[keys.METADATA] = encode_metadata(meta)
