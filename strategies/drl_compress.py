"""DrlCompress: aggregate the updates of clients whose DQN controller chose to send one.

Each client replies with one of: a dense update (`"delta"`, full sync), a compressed
update (`"delta-compressed"`: top-k + 8-bit, pruned layers absent), or nothing (skip).
The server decodes each into a dense Δ_i and applies

    x ← x + Σ_{i ∈ senders} n_i Δ_i / Σ_{i ∈ senders} n_i

so the step is an example-weighted mean over the clients that sent (renormalised),
whatever the mix of full, compressed and skipped replies. Skipped clients cost no uplink.
With `update_aggregation = "sent-mean"` the mean is taken per coordinate, over the clients
that sent that coordinate (a dense reply sends all of them), so a top-k reply beside dense
ones does not pull the coordinates it left out towards 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg
from flwr.supercore import log

from fedrl_app.agents.sync_controller import DECISIONS, DENSE_DECISIONS, ControllerConfig, SyncController
from fedrl_app.protocol import keys
from fedrl_app.protocol.codecs import decode_update
from fedrl_app.protocol.metadata import ClientMetadata
from fedrl_app.protocol.payload import PayloadError, bound_norm, check_arrays, check_magnitude
from fedrl_app.protocol.records import to_numpy, to_record
from strategies.reply_guard import ReplyGuardMixin
from strategies.round_schedule import RoundScheduleMixin
from strategies.strategy_utils import mean_arrays

UPDATE_AGGREGATIONS = ("mean", "sent-mean", "median", "trimmed-mean")
REWARD_BOUND = 10.0  # |reward| a client may report to the shared controller (honest ones stay within a few units)


class DrlCompress(RoundScheduleMixin, ReplyGuardMixin, FlowerFedAvg):
    """Communication-efficient aggregation driven by per-client DQN sync controllers.

    Parameters
    ----------
    bytes_penalty : float (default: 0.1)
        λ in the controllers' reward (accuracy gain − λ · bytes / full-model bytes).
    prune_threshold : float (default: 0.0)
        Layers whose relative update norm is below this are not sent (0 disables).
    num_rounds : int (default: 30)
        Total rounds, for the controllers' progress feature.
    sync_policy : str (default: "dqn")
        "dqn" lets each client's controller decide; "compressed" / "full" fix the
        decision (ablations: what the codec alone gives, and dense deltas).
    controller_reward : str (default: "own-gain")
        How the controllers measure the accuracy gain in their reward: "own-gain" (what the
        client's own message adds, measured at once) or "global-gain" (the global model's gain
        by the next round); see :mod:`fedrl_app.agents.sync_controller`.
    update_aggregation : str (default: "mean")
        How the decoded updates of the senders combine: "mean" (example-weighted), "sent-mean"
        (example-weighted per coordinate over the clients that sent it: see :func:`sent_mean`), or the robust rules
        "median" (coordinate-wise, as Flower's FedMedian) and "trimmed-mean" (coordinate-wise, cutting
        `trimmed_beta` of the values at each end, as Flower's FedTrimmedAvg), unweighted like those, each
        over the clients that sent the coordinate (a top-k update sends few) and scaled by their share.
    trimmed_beta : float (default: 0.2)
        The fraction cut at each end by "trimmed-mean".
    shared_controller : ControllerConfig, optional
        One controller for every client (controller-sharing "shared"): the server keeps it, learns
        from every client's reported transition (previous state and action, reward, new state; one
        gradient-step batch per transition, as a client's own controller does), and sends its
        Q-network down with the model (`keys.CONTROLLER`). None: each client learns its own.
    seed : int (default: 0)
        Seeds the shared controller.
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg`.
    """

    def __init__(self, *, bytes_penalty: float = 0.1, prune_threshold: float = 0.0, num_rounds: int = 30,
                 sync_policy: str = "dqn", controller_reward: str = "own-gain",
                 update_aggregation: str = "mean", trimmed_beta: float = 0.2,
                 shared_controller: ControllerConfig | None = None, seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        if update_aggregation not in UPDATE_AGGREGATIONS:
            raise ValueError(f"update_aggregation must be one of {UPDATE_AGGREGATIONS}, got {update_aggregation!r}")
        self.update_aggregation, self.trimmed_beta = update_aggregation, trimmed_beta
        self.shared = SyncController(shared_controller, seed=seed) if shared_controller is not None else None
        self.sync_policy, self.controller_reward = sync_policy, controller_reward
        self.bytes_penalty, self.prune_threshold, self.num_rounds = bytes_penalty, prune_threshold, num_rounds
        self.current: dict[str, np.ndarray] | None = None
        self._deltas: dict[int, dict[str, np.ndarray]] = {}
        self._dense: set[int] = set()  # nodes whose reply this round was a dense update

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(INFO, "\t├──> DrlCompress settings:")
        log(INFO, "\t│\t├── bytes penalty λ: %s | prune threshold: %s", self.bytes_penalty, self.prune_threshold)
        super().summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the model and the controller settings (the clients run role "sync-controller")."""
        self.current = to_numpy(arrays)
        self._deltas, self._dense = {}, set()
        config = ConfigRecord(dict(config))
        config[keys.BYTES_PENALTY] = self.bytes_penalty
        config[keys.PRUNE_THRESHOLD] = self.prune_threshold
        config[keys.NUM_SERVER_ROUNDS] = self.num_rounds
        config[keys.SYNC_POLICY] = self.sync_policy
        config[keys.CONTROLLER_REWARD] = self.controller_reward
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if self.shared is not None:
            q = to_record({k: v.detach().numpy() for k, v in self.shared.q.state_dict().items()})
            for msg in messages:
                msg.content[keys.CONTROLLER] = q
        return messages

    def check_reply_arrays(self, msg: Message, meta: ClientMetadata) -> None:
        """Decode the reply's update according to the client's decision (CodecError/PayloadError if bad)."""
        decision = meta.sync_decision
        if decision not in DECISIONS:
            raise PayloadError(f"sync_decision {decision!r} is not one of {list(DECISIONS)}")
        records = msg.content.array_records
        if decision == "skip":
            if records:
                raise PayloadError(f"a skip reply must carry no arrays, got {sorted(records)}")
            return
        spec = self._sent_spec or {}
        if decision in DENSE_DECISIONS:
            if keys.DELTA not in records:
                raise PayloadError(f"full-sync reply has no ArrayRecord '{keys.DELTA}'")
            delta = check_arrays(records[keys.DELTA], spec, name=keys.DELTA, max_abs=self.max_abs)
            self._dense.add(msg.metadata.src_node_id)
        else:
            if keys.DELTA_COMPRESSED not in records:
                raise PayloadError(f"compressed reply has no ArrayRecord '{keys.DELTA_COMPRESSED}'")
            delta = decode_update(records[keys.DELTA_COMPRESSED], spec)
            check_magnitude(delta, name=keys.DELTA_COMPRESSED, max_abs=self.max_abs)  # as a dense update's
        self._deltas[msg.metadata.src_node_id] = delta

    def bound_reply(self, msg: Message) -> float | None:
        """Norm bounding of the decoded update (dense or compressed alike)."""
        node = msg.metadata.src_node_id
        if self.max_update_norm <= 0 or node not in self._deltas:
            return None
        bounded, norm = bound_norm(self._deltas[node], self.max_update_norm)
        if bounded is self._deltas[node]:
            return None
        self._deltas[node] = bounded
        return norm

    def aggregate_valid_replies(
        self, server_round: int, replies: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """x + example-weighted mean of the senders' Δ; decision counts go to the round log."""
        self.record_round_stats(server_round)
        if not replies:
            return None, None
        metrics = self.train_metrics_aggr_fn([m.content for m in replies], self.weighted_by_key)
        senders = [m for m in replies if m.metadata.src_node_id in self._deltas]
        if not senders or self.current is None:
            return None, metrics  # everyone skipped: the model stays
        updates = [self._deltas[m.metadata.src_node_id] for m in senders]
        if self.update_aggregation == "median":
            step = coordinate_median(updates)
        elif self.update_aggregation == "trimmed-mean":
            step = trimmed_mean(updates, self.trimmed_beta)
        else:
            weights = [next(iter(m.content.metric_records.values()))[self.weighted_by_key] for m in senders]
            if self.update_aggregation == "sent-mean":
                step = sent_mean(updates, weights, [m.metadata.src_node_id in self._dense for m in senders])
            else:
                step = mean_arrays(updates, weights)
        return to_record(apply_update(self.current, step)), metrics


    def reply_delta(self, msg: Message, start: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """The decoded Δ of a checked reply (None for a skip): already relative to `start`."""
        return self._deltas.pop(msg.metadata.src_node_id, None)

    def record_round_stats(self, server_round: int) -> None:
        """Decision counts, senders, mean reward and compression rate of a round's reports."""
        round_log = self.rounds[server_round]
        reports = [r.metadata for r in round_log.reports]
        decisions = Counter(m.sync_decision for m in reports)
        round_log.extra.update({f"sync-{a}": decisions.get(a, 0) for a in DECISIONS})
        round_log.extra["senders"] = sum(m.sync_decision != "skip" for m in reports)
        rewards = [m.controller_reward for m in reports if m.controller_reward is not None]
        rates = [m.compression_rate for m in reports if m.compression_rate is not None]
        if rewards:
            round_log.extra["controller-reward"] = float(np.mean(rewards))
        if rates:
            round_log.extra["compression-rate"] = float(np.mean(rates))
        if self.shared is not None:
            self.learn_shared(reports, round_log.extra)

    def learn_shared(self, reports: list[ClientMetadata], extra: dict) -> None:
        """Learn the shared controller from the transitions the clients reported (rewards clipped: untrusted)."""
        dim = self.shared.config.state_dim
        transitions = [(m.controller_previous_state, m.controller_previous_action, m.controller_reward,
                        m.controller_state) for m in reports
                       if m.controller_previous_state is not None and m.controller_previous_action is not None
                       and m.controller_reward is not None and m.controller_state is not None]
        losses = []
        for before, action, reward, after in transitions:
            if len(before) != dim or len(after) != dim or not 0 <= action < self.shared.config.num_actions:
                continue  # a client on other features, or a hostile one: not this controller's transition
            self.shared.remember(before, action, float(np.clip(reward, -REWARD_BOUND, REWARD_BOUND)), after)
            losses.append(self.shared.learn())
        extra["shared-controller-transitions"] = len(losses)
        if losses:
            extra["shared-controller-td-loss"] = float(np.mean([x for x in losses if x is not None]))

    def state_dict(self) -> dict[str, dict[str, np.ndarray]]:
        """The shared controller (its networks, optimizer and replay, as one blob), if there is one, and the
        reply guard's groups (the round pace)."""
        state = super().state_dict()
        if self.shared is not None:
            state["shared-controller"] = {"blob": np.frombuffer(self.shared.to_bytes(), dtype=np.uint8).copy()}
        return state

    def load_state_dict(self, state: dict[str, dict[str, np.ndarray]]) -> None:
        """Restore the shared controller from `state_dict`'s blob, and the reply guard's groups."""
        super().load_state_dict(state)
        if self.shared is not None and "shared-controller" in state:
            self.shared = SyncController.from_bytes(np.asarray(state["shared-controller"]["blob"], np.uint8).tobytes())


def apply_update(x: dict[str, np.ndarray], step: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """x + step, in x's dtypes."""
    return {k: (x[k] + step[k]).astype(x[k].dtype) for k in x}


def sent_mean(updates: list[dict[str, np.ndarray]], weights: list[float],
              dense: list[bool]) -> dict[str, np.ndarray]:
    """Example-weighted mean per coordinate over the clients that sent it: Σ_i n_i s_ij Δ_ij / Σ_i n_i s_ij, where
    s_ij is 1 if client i sent coordinate j (every coordinate of a dense update; the non-zero ones of a decoded
    top-k update) and 0 otherwise; 0 where nobody sent it. With only dense replies it is the plain weighted mean.
    Beside dense replies, a top-k reply no longer shrinks the step on the coordinates it left out by the
    dense clients' share of examples (they wait in its error-feedback residual; the plain mean counts them as 0).
    Meant for rounds that mix dense and top-k replies: where every reply is top-k, a coordinate one client sent
    gets that client's whole value (up to n× the plain mean's step), which error feedback does not expect."""
    if not len(updates) == len(weights) == len(dense):
        raise ValueError(f"{len(updates)} updates, {len(weights)} weights and {len(dense)} dense flags")
    out = {}
    for k in updates[0]:
        num = np.zeros(updates[0][k].shape, np.float64)
        den = np.zeros(updates[0][k].shape, np.float64)
        for u, w, whole in zip(updates, weights, dense):
            value = u[k].astype(np.float64)
            num += w * value
            den += w if whole else w * (value != 0)
        out[k] = np.divide(num, den, out=np.zeros_like(num), where=den > 0).astype(updates[0][k].dtype)
    return out


def _sent_values(updates: list[dict[str, np.ndarray]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(values sorted per coordinate with the coordinates a client did not send (exact 0) as NaN, last;
    how many clients sent each coordinate). A top-k update carries k of the model's coordinates: a rule
    over all n clients would mostly see zeros, and a trimmed mean would cut away every coordinate that
    fewer than ⌊β·n⌋ + 1 clients happened to send."""
    values = np.stack([u[key].astype(np.float64) for u in updates])
    sent = values != 0
    return np.sort(np.where(sent, values, np.nan), axis=0), sent.sum(axis=0)


def coordinate_median(updates: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Coordinate-wise median over the clients that sent each coordinate, × (senders / n) so that a dense round
    (every client sends every coordinate) is the plain median and a sparse one keeps the mean's scale
    (float64, cast back); 0 where nobody sent it."""
    n, out = len(updates), {}
    for k in updates[0]:
        ordered, m = _sent_values(updates, k)
        with np.errstate(invalid="ignore"):
            median = np.where(m > 0, np.nanmedian(np.where(m > 0, ordered, 0.0), axis=0), 0.0)
        out[k] = (median * m / n).astype(updates[0][k].dtype)
    return out


def trimmed_mean(updates: list[dict[str, np.ndarray]], beta: float) -> dict[str, np.ndarray]:
    """Coordinate-wise trimmed mean over the clients that sent each coordinate: of its m senders' values,
    ⌊β·m⌋ of the smallest and of the largest are cut (FedTrimmedAvg's rule when every client sends every
    coordinate), and the mean of the rest is scaled by m / n, the share of clients that sent it (so a
    coordinate one client sent counts as FedAvg would count it)."""
    n, out = len(updates), {}
    for k in updates[0]:
        ordered, m = _sent_values(updates, k)
        cut = np.floor(beta * m).astype(int)
        rank = np.arange(n).reshape((n,) + (1,) * (ordered.ndim - 1))
        keep = (rank >= cut) & (rank < m - cut)
        kept = np.maximum(m - 2 * cut, 1)
        mean = np.where(keep, np.nan_to_num(ordered), 0.0).sum(axis=0) / kept
        out[k] = np.where(m > 0, mean * m / n, 0.0).astype(updates[0][k].dtype)
    return out
