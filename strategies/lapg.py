"""LAPG: lazily aggregated policy gradient — clients skip uploads that would change little; the server reuses them.

Chen, Zhang, Giannakis and Başar, "Communication-Efficient Policy Gradient Methods for
Distributed Reinforcement Learning", IEEE TCNS 2022. The server keeps ĝ_m, the last gradient it
accepted from each client m, and ascends on

    θ_{k+1} = θ_k + η · (1/M_k) · Σ_{m replying in round k} ĝ_m,
    ĝ_m = ĝ_m(θ^k) if m uploaded in round k, else its last upload ĝ_m(θ̂_m) (reused, stale).

Client m skips (a reply with metadata and metrics, no arrays) when the lazy condition holds

    ‖ĝ_m(θ^k) − ĝ_m(θ̂_m)‖² ≤ (ξ / D) · (1 / η²) · Σ_{d=1}^{D} ‖θ^{k+1−d} − θ^{k−d}‖²,

with ξ = `lapg-threshold` and D = `lapg-memory`; the client evaluates it itself
(`fedrl_app.client.policy_gradient.lazy_skip`, whose docstring derives it from the paper's rule). For that the
server sends η, ξ, D and the last D squared step norms ‖θ^{k+1−d} − θ^{k−d}‖² (newest first).
The paper sums over all M workers every iteration; here the mean runs over the clients that
replied this round (a client that did not reply at all contributes nothing, stale or fresh).

A skip from a client the server has no accepted upload from (e.g. its last upload was dropped)
is refused like any bad reply. Per round, `rounds[r].extra` records the partitions that uploaded
and skipped, uploads saved this round and in total, and the bound sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.supercore import log

from fedrl_app.protocol import keys
from fedrl_app.protocol.metadata import ClientMetadata
from fedrl_app.protocol.payload import PayloadError
from fedrl_app.protocol.records import to_numpy
from strategies.fedpg import FedPG
from strategies.strategy_utils import mean_arrays, squared_norm


class LAPG(FedPG):
    """FedPG with lazy, client-decided uploads and server-side reuse of stale gradients.

    Parameters
    ----------
    threshold : float (default: 1.0)
        ξ in the lazy condition (0: skip only exact repeats, i.e. plain FedPG in practice).
    memory : int (default: 10)
        D, the number of past steps the condition's right-hand side sums over.
    **kwargs
        Passed to :class:`strategies.fedpg.FedPG`.
    """

    def __init__(self, *, threshold: float = 1.0, memory: int = 10, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold, self.memory = threshold, memory
        self.last: dict[int, dict[str, np.ndarray]] = {}  # partition id -> its last accepted gradient
        self.recent_steps: list[float] = []                # ‖θ^{j+1} − θ^j‖², newest first, at most D
        self.uploads_saved_total = 0

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(INFO, "\t├──> LAPG: ξ=%s, D=%d", self.threshold, self.memory)
        super().summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send what the clients' lazy condition needs: ξ, D and the recent squared step norms."""
        config = ConfigRecord(dict(config))
        config[keys.LAZY] = True
        config[keys.LAPG_THRESHOLD] = float(self.threshold)
        config[keys.LAPG_MEMORY] = int(self.memory)
        config[keys.LAPG_RECENT_STEPS] = [float(x) for x in self.recent_steps[: self.memory]]
        self.rounds[server_round + self.round_offset].extra["lazy-bound"] = (
            self.threshold / self.memory / self.lr**2 * float(sum(self.recent_steps[: self.memory])))
        return super().configure_train(server_round, arrays, config, grid)

    def check_reply_arrays(self, msg: Message, meta: ClientMetadata) -> None:
        """A skip carries no arrays and needs an earlier accepted upload; an upload is checked as usual."""
        if meta.gradient_uploaded is False:
            if msg.content.array_records:
                raise PayloadError(f"a lazy skip must carry no arrays, got {sorted(msg.content.array_records)}")
            if meta.partition_id not in self.last:
                raise PayloadError("lazy skip, but the server holds no accepted upload from this client to reuse")
            return
        super(FedPG, self).check_reply_arrays(msg, meta)

    def round_direction(self, server_round: int, replies: list[Message]) -> dict[str, np.ndarray]:
        """Mean over replying clients of their fresh gradient, or of their last upload if they skipped."""
        partition = self.rounds[server_round].partition_of()
        uploaded, skipped, grads = [], [], []
        for msg in replies:
            node = msg.metadata.src_node_id
            if keys.GRADIENT in msg.content.array_records:
                self.last[partition[node]] = to_numpy(msg.content[keys.GRADIENT])
                uploaded.append(partition.get(node, node))
            else:
                skipped.append(partition.get(node, node))
            grads.append(self.last[partition[node]])
        self.uploads_saved_total += len(skipped)
        self.rounds[server_round].extra.update({
            "uploaded": sorted(uploaded), "skipped": sorted(skipped), "uploads-saved": len(skipped),
            "uploads-saved-total": self.uploads_saved_total,
        })
        return mean_arrays(grads)

    def state_dict(self) -> dict[str, dict[str, np.ndarray]]:
        """FedPG's state, the last accepted gradient of every partition, the recent step norms, the uploads saved."""
        state = super().state_dict()
        state["lapg"] = {"recent-steps": np.asarray(self.recent_steps, np.float64),
                         "uploads-saved-total": np.array([self.uploads_saved_total], np.int64)}
        state.update({f"lapg/last/{pid}": dict(grad) for pid, grad in self.last.items()})
        return state

    def load_state_dict(self, state: dict[str, dict[str, np.ndarray]]) -> None:
        """Restore `state_dict`'s memory: a client that skips after a resume still has its upload to reuse."""
        super().load_state_dict(state)
        if "lapg" in state:
            self.recent_steps = [float(x) for x in state["lapg"]["recent-steps"]]
            self.uploads_saved_total = int(state["lapg"]["uploads-saved-total"][0])
        self.last = {int(k.removeprefix("lapg/last/")): dict(v) for k, v in state.items() if k.startswith("lapg/last/")}

    def after_step(self, server_round: int, old: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> None:
        """Remember ‖θ^{k+1} − θ^k‖² (as applied, in the model's dtype) for the next rounds' bound."""
        step = {k: new[k].astype(np.float64) - old[k].astype(np.float64) for k in new}
        self.recent_steps = [squared_norm(step), *self.recent_steps][: self.memory]
