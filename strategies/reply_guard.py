"""ReplyGuardMixin: check every client reply before aggregation; drop bad ones, keep the round going."""

from __future__ import annotations

import math
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.supercore import log

from fedrl_app.protocol import keys
from fedrl_app.protocol.codecs import CodecError
from fedrl_app.protocol.metadata import ClientMetadata, MetadataError, read_metadata
from fedrl_app.protocol.payload import MAX_ABS, PayloadError, bound_norm, check_arrays
from fedrl_app.protocol.records import array_spec, recorddict_nbytes, to_numpy, to_record
from fedrl_app.systems.clock import ClientTime, client_time, synchronous_round_s
from fedrl_app.systems.profiles import SystemsModel


@dataclass
class ClientReport:
    """One accepted training reply, as the hooks and benchmarks see it."""

    node_id: int
    metadata: ClientMetadata
    metrics: dict[str, float]


@dataclass
class RoundLog:
    """What the strategy saw in one round."""

    reports: list[ClientReport] = field(default_factory=list)
    dropped: list[tuple[int, str]] = field(default_factory=list)  # (node id, reason)
    train_metrics: dict[str, float] = field(default_factory=dict)
    evaluate_metrics: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # strategy-specific per-round series (JSON-able)

    def partition_of(self) -> dict[int, int]:
        """Node id → the partition its accepted reply reported (metadata the guard decoded)."""
        return {r.node_id: r.metadata.partition_id for r in self.reports}


# Without known partition sizes a claim may be at most this many times the median claim: the largest of 10
# Dirichlet(0.3) MNIST partitions is 1.4-2.5× the median (seeds 1-12), so honest clients keep their weights, while
# two inflating clients of ten hold at most 6/14 of the weight instead of all of it.
CLAIMS_MEDIAN_FACTOR = 3.0
MIN_CLAIMS = 5  # fewer claims than this to compare with: no median rule
RECENT_CLAIMS = 100
MAX_CACHED_TIMINGS = 10_000
PACE_GROUP = "round-pace"  # checkpoint group of the broadcast round pace


class ReplySizer:
    """Reads a reply's serialized size (the metered grid's measurement). A service, not state: the copies a
    wrapper makes of a strategy (one per cluster) share it, and a copy never reaches into the grid."""

    def __init__(self, reply_nbytes: Callable[[Message], int]) -> None:
        self.reply_nbytes = reply_nbytes

    def __call__(self, msg: Message) -> int:
        return self.reply_nbytes(msg)

    def __deepcopy__(self, memo: dict) -> ReplySizer:
        return self


class ReplyGuardMixin:
    """Validate replies (errors, metadata, arrays, metrics) and decode client metadata.

    A reply is dropped, with one WARNING line naming the node and the reason, when it
    carries an error, its metadata is refused by the allowlist decoder, its arrays do
    not match the keys/shapes/dtypes the server sent (or hold NaN/Inf/values beyond
    ±`max_abs`), its metrics lack a positive `num-examples`, or (with the virtual clock)
    it arrives after the round's deadline. Of the rest, the update's norm is bounded
    (`configure_update_bounds`) and the claimed `num-examples`, the reply's weight, is
    capped (`configure_example_caps`), each logged and counted. The remaining replies go
    to the strategy's aggregation through `aggregate_valid_replies`. With `configure_clock`
    every reply is timed on its partition's profile (`fedrl_app.systems`).

    Subclasses list the ArrayRecords each reply must carry in `reply_array_records`;
    each must match the spec of the global arrays.
    """

    reply_array_records: tuple[str, ...] = (keys.ARRAYS,)

    # The mixin sits before a Flower strategy in the bases; the `super()` calls below reach that
    # strategy, which mypy cannot see from the mixin alone (hence the `type: ignore[misc]`s).

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rounds: dict[int, RoundLog] = defaultdict(RoundLog)
        self._sent_spec: dict[str, tuple[tuple[int, ...], str]] | None = None
        self._expected_replies: int | None = None
        self.systems: SystemsModel | None = None  # the virtual clock is off until `configure_clock`
        self.deadline_s, self.local_epochs = 0.0, 1
        self.broadcast_pace, self.round_pace_s = False, 0.0  # `configure_clock`; the pace: see `configure_train`
        self._download_bytes: dict[int, int] = {}     # node -> bytes of the train message it was sent
        self.max_abs, self.max_update_norm = MAX_ABS, 0.0  # the magnitude policy (`configure_update_bounds`)
        self._sent_arrays: dict[int, dict[str, np.ndarray]] = {}  # node -> the model it was sent (norm bounding)
        self.known_examples: dict[int, int] = {}      # partition -> its true training-set size, where known
        self.claims_median_factor = CLAIMS_MEDIAN_FACTOR
        self._recent_claims: deque[float] = deque(maxlen=RECENT_CLAIMS)
        self._reply_nbytes: Callable[[Message], int] = ReplySizer(lambda msg: recorddict_nbytes(msg.content))
        self._timings: dict[str, tuple[int, ClientTime]] = {}  # message id -> (examples it was timed for, time)

    def configure_update_bounds(self, max_abs: float = MAX_ABS, max_update_norm: float = 0.0) -> None:
        """Every value of a reply within ±max_abs (else it is refused); every update's norm bounded by
        `max_update_norm` (> 0; norm bounding, Sun et al. 2019: scaled down, not refused)."""
        self.max_abs, self.max_update_norm = max_abs, max_update_norm

    def bound_reply(self, msg: Message) -> float | None:
        """Bound the norm of the update a checked reply carries; its norm before if it was scaled down, else None.

        Here the reply is a model: its update is the model returned minus the model sent. Strategies whose
        replies carry an update (drl-compress) or a gradient (policy gradient) override this.
        """
        sent = self._sent_arrays.get(msg.metadata.src_node_id)
        if self.max_update_norm <= 0 or sent is None:
            return None
        returned = to_numpy(msg.content[keys.ARRAYS])
        update = {k: v.astype(np.float64) - sent[k].astype(np.float64) for k, v in returned.items()}
        bounded, norm = bound_norm(update, self.max_update_norm)
        if bounded is update:
            return None
        msg.content[keys.ARRAYS] = to_record({k: (sent[k] + bounded[k]).astype(returned[k].dtype) for k in returned})
        return norm

    def configure_example_caps(self, known: dict[int, int] | None = None,
                               median_factor: float = CLAIMS_MEDIAN_FACTOR) -> None:
        """Cap each reply's claimed `num-examples` (its aggregation weight): at its partition's size where
        `known`, else at `median_factor` × the median of the recent accepted claims and this round's."""
        self.known_examples, self.claims_median_factor = dict(known or {}), median_factor

    def example_cap(self, partition_id: int, round_claims: list[float]) -> tuple[float, str]:
        """(the most examples a reply of this partition may claim, why)."""
        if partition_id in self.known_examples:
            return float(self.known_examples[partition_id]), f"partition {partition_id}'s size"
        pool = [*self._recent_claims, *round_claims]
        if len(pool) < MIN_CLAIMS:
            return float("inf"), "too few claims to compare with"
        median = float(np.median(pool))
        return self.claims_median_factor * median, f"{self.claims_median_factor:g} × the median claim {median:.0f}"

    def configure_clock(self, systems: SystemsModel, deadline_s: float = 0.0, local_epochs: int = 1,
                        broadcast_pace: bool = False) -> None:
        """Time every reply on the virtual clock (`fedrl_app.systems`); drop replies later than `deadline_s` (> 0).
        `broadcast_pace` (synchronous rounds only): tell the clients each round how long the last one would have
        lasted with free uploads (`keys.ROUND_PACE_S`), so that a client can tell what its upload adds."""
        self.systems, self.deadline_s, self.local_epochs = systems, deadline_s, local_epochs
        self.broadcast_pace = broadcast_pace

    def configure_reply_sizes(self, reply_nbytes: Callable[[Message], int]) -> None:
        """Where the clock reads a reply's size: the grid that already measured it (`MeteredGrid.reply_nbytes`),
        so that no reply is serialized twice to be measured."""
        self._reply_nbytes = ReplySizer(reply_nbytes)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the spec of the arrays sent out (replies are checked against it) and each message's size."""
        self._sent_spec = array_spec(arrays)
        if self.broadcast_pace and self.round_pace_s > 0:
            config = ConfigRecord({**config, keys.ROUND_PACE_S: self.round_pace_s})
        messages = list(super().configure_train(server_round, arrays, config, grid))  # type: ignore[misc]  # Flower's
        self._expected_replies = len(messages)
        if self.max_update_norm > 0:  # (async dispatches one node at a time, each from its own model version)
            sent = to_numpy(arrays)
            self._sent_arrays.update({m.metadata.dst_node_id: sent for m in messages})
        if self.systems is not None:
            sizes: dict[int, int] = {}  # Flower's strategies reuse one RecordDict for every node
            for msg in messages:
                if id(msg.content) not in sizes:
                    sizes[id(msg.content)] = recorddict_nbytes(msg.content)
                self._download_bytes[msg.metadata.dst_node_id] = sizes[id(msg.content)]
        return messages

    def client_time(self, msg: Message, meta: ClientMetadata, remember: bool = False) -> ClientTime | None:
        """A reply's simulated round time on its partition's profile (None without a clock). `remember`: keep it
        for the checks' own call (an async wrapper times a reply when it arrives, and the checks run later)."""
        if self.systems is None:
            return None
        message_id = msg.metadata.message_id  # ("" for a message never sent: not cached)
        cached = self._timings.pop(message_id, None) if message_id else None
        if cached is not None and cached[0] == meta.num_examples:  # (a clipped claim changes the compute time)
            return cached[1]
        timing = client_time(self.systems.profile(meta.partition_id),
                             self._download_bytes.get(msg.metadata.src_node_id, 0),
                             meta.num_examples * self.local_epochs, self._reply_nbytes(msg))
        if remember and message_id:
            self._timings[message_id] = (meta.num_examples, timing)
        while len(self._timings) > MAX_CACHED_TIMINGS:  # replies timed but never checked (a run that ended)
            self._timings.pop(next(iter(self._timings)))
        return timing

    def filter_train_replies(self, server_round: int, replies: Iterable[Message]) -> list[Message]:
        """Keep the replies that pass every check; log and record the others."""
        replies = list(replies)
        round_log = self.rounds[server_round]
        if self._expected_replies is not None:  # sampled nodes whose reply never came (timeout, crash)
            round_log.extra["clients-no-reply"] = max(self._expected_replies - len(replies), 0)
        kept: list[Message] = []
        times: dict[int, ClientTime] = {}  # partition -> time, of the replies kept
        unavailable = late = clipped = norm_bounded = 0
        round_claims = [c for c in (_claimed_examples(m) for m in replies) if c is not None]
        for msg in replies:
            node = msg.metadata.src_node_id
            try:
                if msg.has_error():
                    unavailable += msg.error.reason.startswith(keys.UNAVAILABLE)
                    raise PayloadError(f"client error: {msg.error.reason}")
                content = msg.content
                meta = read_metadata(content)
                metrics = _check_metrics(content)
                self.check_reply_arrays(msg, meta)
                if (norm := self.bound_reply(msg)) is not None:
                    log(INFO, "round %d: node %d's update norm %.4g bounded to %g", server_round, node, norm,
                        self.max_update_norm)
                    norm_bounded += 1
                cap, why = self.example_cap(meta.partition_id, round_claims)
                if metrics[keys.NUM_EXAMPLES] > cap:  # its weight in the mean: an untrusted claim
                    log(WARNING, "round %d: node %d claims %.4g examples; clipped to %d (%s)", server_round, node,
                        metrics[keys.NUM_EXAMPLES], int(cap), why)
                    next(iter(content.metric_records.values()))[keys.NUM_EXAMPLES] = int(cap)
                    metrics[keys.NUM_EXAMPLES] = meta.num_examples = int(cap)
                    clipped += 1
                timing = self.client_time(msg, meta)
                if timing is not None:
                    if self.deadline_s > 0 and timing.total_s > self.deadline_s:
                        late += 1
                        raise PayloadError(f"late: {timing.total_s:.1f} s on the virtual clock > the "
                                           f"{self.deadline_s:g} s deadline")
                    times[meta.partition_id] = timing
            except (MetadataError, PayloadError, CodecError) as err:
                log(WARNING, "round %d: dropped reply from node %d: %s", server_round, node, err)
                round_log.dropped.append((node, str(err)))
                continue
            kept.append(msg)
            round_log.reports.append(ClientReport(node_id=node, metadata=meta, metrics=metrics))
        round_log.extra["examples-clipped"] = round_log.extra.get("examples-clipped", 0) + clipped
        if self.max_update_norm > 0:
            round_log.extra["updates-norm-bounded"] = round_log.extra.get("updates-norm-bounded", 0) + norm_bounded
        self._recent_claims.extend(float(next(iter(m.content.metric_records.values()))[keys.NUM_EXAMPLES]) for m in kept)
        # Flower aggregates MetricRecords key by key: keep the common key set only.
        kept = _majority_metric_keys(kept, server_round, round_log)
        # Replies arrive in whatever order the clients finish; aggregating them by partition makes every float
        # sum, and Fusion's buffer, the same in every run (node ids change from run to run, partitions do not).
        partition_of = round_log.partition_of()
        kept.sort(key=lambda m: partition_of.get(m.metadata.src_node_id, -1))
        if self.systems is not None:  # (an async wrapper calls this per reply and sets its own round time)
            extra = round_log.extra
            extra["clients-unavailable"] = extra.get("clients-unavailable", 0) + unavailable
            extra["clients-late"] = extra.get("clients-late", 0) + late
            extra.setdefault("client-times-s", {}).update({str(p): t.as_list() for p, t in sorted(times.items())})
            failed = late + unavailable + extra.get("clients-no-reply", 0)
            extra["round-sim-time-s"] = synchronous_round_s([t.total_s for t in times.values()], failed,
                                                            self.deadline_s)
            if times:  # the round's length had every upload been free: what the next round's clients are told
                self.round_pace_s = max(t.download_s + t.compute_s for t in times.values())
        log(INFO, "round %d: %d replies accepted, %d dropped", server_round, len(kept), len(round_log.dropped))
        return kept

    def drop_accepted_reply(self, server_round: int, msg: Message, reason: str) -> None:
        """Take back a reply `filter_train_replies` accepted (a wrapper's own check failed): log and record it."""
        _record_drop(self.rounds[server_round], server_round, msg, reason)

    def check_reply_arrays(self, msg: Message, meta: ClientMetadata) -> None:
        """Raise PayloadError unless every record in `reply_array_records` matches the sent spec."""
        for name in self.reply_array_records:
            if name not in msg.content.array_records:
                raise PayloadError(f"reply has no ArrayRecord '{name}'")
            if self._sent_spec is not None:
                check_arrays(msg.content.array_records[name], self._sent_spec, name=name, max_abs=self.max_abs)

    def reply_delta(self, msg: Message, start: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """The update a checked reply carries, relative to the model the client started from."""
        return {k: v.numpy() - start[k] for k, v in msg.content[keys.ARRAYS].items()}

    def record_round_stats(self, server_round: int) -> None:
        """Strategy-specific per-round series for `rounds[server_round].extra` (none by default)."""

    def state_dict(self) -> dict[str, dict[str, np.ndarray]]:
        """Checkpoint groups: the round pace when it is broadcast (so a resumed run sends it from its first
        round), else none. A subclass with state of its own merges this in."""
        if not self.broadcast_pace:
            return {}
        return {PACE_GROUP: {"round-pace-s": np.array([self.round_pace_s], np.float64)}}

    def load_state_dict(self, state: dict[str, dict[str, np.ndarray]]) -> None:
        """Restore `state_dict`'s groups (the round pace, if the checkpoint has it)."""
        if PACE_GROUP in state:
            self.round_pace_s = float(np.asarray(state[PACE_GROUP]["round-pace-s"]).reshape(-1)[0])

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Filter the replies, then aggregate the valid ones."""
        return self.aggregate_checked(server_round, self.filter_train_replies(server_round, replies))

    def aggregate_checked(
        self, server_round: int, kept: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate replies that passed `filter_train_replies` (a wrapper may filter, then transform them)."""
        arrays, metrics = self.aggregate_valid_replies(server_round, kept)
        if metrics is not None:
            self.rounds[server_round].train_metrics = {k: float(v) for k, v in metrics.items() if not isinstance(v, list)}
        return arrays, metrics

    def aggregate_valid_replies(
        self, server_round: int, replies: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregation of checked replies; the wrapped Flower strategy's by default."""
        return super().aggregate_train(server_round, replies)  # type: ignore[misc]  # Flower's

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Drop evaluation replies with errors or bad metrics, then aggregate."""
        kept = []
        for msg in replies:
            try:
                if msg.has_error():
                    raise PayloadError(f"client error: {msg.error.reason}")
                _check_metrics(msg.content)
            except PayloadError as err:
                log(WARNING, "round %d: dropped evaluate reply from node %d: %s", server_round,
                    msg.metadata.src_node_id, err)
                continue
            kept.append(msg)
        kept = _majority_metric_keys(kept, server_round, None)
        metrics = super().aggregate_evaluate(server_round, kept)  # type: ignore[misc]  # Flower's
        if metrics is not None:
            self.rounds[server_round].evaluate_metrics = {
                k: float(v) for k, v in metrics.items() if not isinstance(v, list)
            }
        return metrics


def _check_metrics(content) -> dict[str, float]:
    if len(content.metric_records) != 1:
        raise PayloadError(f"expected one MetricRecord, got {len(content.metric_records)}")
    record = next(iter(content.metric_records.values()))
    metrics: dict[str, float] = {}
    for key, value in record.items():
        values = value if isinstance(value, list) else [value]
        if not all(math.isfinite(float(v)) for v in values):
            raise PayloadError(f"metric '{key}' is not finite")
        if not isinstance(value, list):
            metrics[key] = float(value)
    if not metrics.get(keys.NUM_EXAMPLES, 0) > 0:
        raise PayloadError(f"metric '{keys.NUM_EXAMPLES}' missing or not positive")
    return metrics


def _claimed_examples(msg: Message) -> float | None:
    """A reply's claimed `num-examples`, if it has a plausible one (for the round's median; checks come later)."""
    if msg.has_error() or len(msg.content.metric_records) != 1:
        return None
    value = next(iter(msg.content.metric_records.values())).get(keys.NUM_EXAMPLES)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) and value > 0 else None


def _majority_metric_keys(kept: list[Message], server_round: int, round_log: RoundLog | None) -> list[Message]:
    if not kept:
        return kept
    keysets = [frozenset(next(iter(m.content.metric_records.values())).keys()) for m in kept]
    majority, _ = Counter(keysets).most_common(1)[0]
    out = []
    for msg, keyset in zip(kept, keysets):
        if keyset == majority:
            out.append(msg)
            continue
        _record_drop(round_log, server_round, msg, f"metric keys {sorted(keyset)} differ from the round's {sorted(majority)}")
    return out


def _record_drop(round_log: RoundLog | None, server_round: int, msg: Message, reason: str) -> None:
    """One WARNING line; the drop recorded, and the node's report (if it was accepted) taken back."""
    node = msg.metadata.src_node_id
    log(WARNING, "round %d: dropped reply from node %d: %s", server_round, node, reason)
    if round_log is not None:
        round_log.dropped.append((node, reason))
        round_log.reports = [r for r in round_log.reports if r.node_id != node]

