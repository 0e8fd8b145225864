"""AsyncBuffer: asynchronous buffered aggregation (FedBuff) with staleness weighting, over any update strategy.

The server keeps every client busy: each one trains on the model version current when it was
dispatched; its update arrives at a simulated time, dispatch time + its duration, and updates
are applied in order of arrival. With the virtual clock (`fedrl_app.systems`, MNIST) a duration is
the client's download + compute + upload of the bytes it really moved, on its profile, known once
its reply is in: an arrival is consumed only when no job still in flight could finish before it
(a job cannot finish before its download + compute, as last measured). Without it (the
policy-gradient strategies, for now) each client's duration is a seeded log-normal slowness
(`speed_sigma`) times U(1 − jitter, 1 + jitter). A client that drops out costs its usual round
time and is dispatched again. Every `buffer_size` arrivals the server aggregates

    x ← x + η · Σ_i n_i s(τ_i) Δ_i / Σ_i n_i s(τ_i),   s(τ) = (1 + τ)^(−a),

where τ_i is the number of versions the model advanced while client i was training,
and redispatches each reporting client with the newest model. Staleness is real: the
ClientApps do train on old versions. Messages go through `Grid.push_messages` /
`pull_messages`; the simulated clock only decides the order in which arrivals are
consumed, so no run sleeps to imitate a slow client.

The wrapped strategy (a `strategies.wrapper.CheckedStrategy`) builds the messages and checks
the replies (`configure_train`, `filter_train_replies`); its `reply_delta` turns a checked reply
into Δ relative to the version the client started from.

The event loop (dispatch, simulated clock, arrival order, pulling, redispatch, evaluation) is
separate from the update rule, which is three methods a subclass may override:
`prepare_dispatch` (what a client dispatched at version v starts from), `contribution` (what a
checked reply adds to the buffer) and `apply_buffer` (the step once K have arrived). AFedPG
(`strategies.afedpg`) reuses the loop with K = 1 and its own rule.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result
from flwr.supercore import log

from fedrl_app.protocol import keys
from fedrl_app.protocol.metadata import MetadataError, read_metadata
from fedrl_app.protocol.records import to_numpy, to_record
from fedrl_app.systems.profiles import ProfileError
from strategies.strategy_utils import SubsetGrid, mean_arrays, rng_from_array, rng_to_array, staleness_weight
from strategies.wrapper import CheckedStrategy, StrategyState, StrategyWrapper

MIN_FAILED_JOB_S = 1.0  # a dropout whose round time is not known yet still costs this much simulated time


@dataclass(order=True)
class Job:
    finish_time: float  # exact without a clock; with one, a lower bound until the reply is in
    seq: int
    node_id: int
    version: int
    message_id: str
    info: Any = field(default=None, compare=False)  # what `prepare_dispatch` noted for this job
    dispatch_time: float = field(default=0.0, compare=False)


@dataclass
class Arrival:
    """One checked reply in the buffer: its contribution, weight, staleness τ and job."""

    update: dict[str, np.ndarray]
    weight: float
    tau: int
    job: Job



def client_speeds(node_ids: list[int], sigma: float, seed: int) -> dict[int, float]:
    """Per-client time per job: LogNormal(0, sigma) slowness, seeded, drawn in the order given (1.0 if sigma=0).

    Pass the grid's order: `fedrl_app.server.reply_order.PartitionOrderGrid` lists nodes by partition, so
    partition p gets the p-th draw in every run, whatever node ids the SuperLink assigned.
    """
    rng = np.random.default_rng(seed)
    return {n: float(rng.lognormal(0.0, sigma)) if sigma > 0 else 1.0 for n in node_ids}


class AsyncBuffer(StrategyWrapper):
    """Asynchronous buffered aggregation with staleness weighting around an update strategy.

    Parameters
    ----------
    strategy : CheckedStrategy
        FedAvg, FedProx or DrlCompress, built with `min_train_nodes = min_available_nodes = 1`
        (`required_settings`: each dispatch addresses one node).
    buffer_size : int (default: 5)
        K: arrivals per aggregation (one aggregation = one "round" / model version).
    staleness_exponent : float (default: 0.5)
        a in s(τ) = (1 + τ)^(−a); 0 weights every update equally.
    server_lr : float (default: 1.0)
        η, the server step on the weighted mean update.
    speed_sigma : float (default: 1.0)
        Spread of the clients' log-normal slowness (0: all equally fast).
    seed : int (default: 0)
        Seeds speeds and jitter.
    poll_interval : float (default: 0.2)
        Seconds between pulls while waiting for the next arrival.
    jitter : float (default: 0.1)
        Each job's duration is the client's slowness times U(1 − jitter, 1 + jitter).
    speeds : dict[int, float], optional
        Explicit per-node slowness (overrides `speed_sigma`), for tests and replays.
    """

    required_settings = {"min_train_nodes": 1, "min_available_nodes": 1}
    state_prefix = "async"

    def __init__(self, strategy: CheckedStrategy, *, buffer_size: int = 5, staleness_exponent: float = 0.5, server_lr: float = 1.0,
                 speed_sigma: float = 1.0, seed: int = 0, poll_interval: float = 0.2, jitter: float = 0.1,
                 speeds: dict[int, float] | None = None) -> None:
        super().__init__(strategy)
        self.buffer_size, self.staleness_exponent, self.server_lr = buffer_size, staleness_exponent, server_lr
        self.speed_sigma, self.seed, self.poll_interval = speed_sigma, seed, poll_interval
        self.jitter, self.speeds = jitter, speeds
        self.rng = np.random.default_rng(seed + 1)
        self.staleness: list[tuple[int, int, int]] = []  # (version aggregated into, node, τ)
        self.sim_time = 0.0

    def own_state_dict(self) -> StrategyState:
        """The clock (simulated time, the jitter stream) and the staleness history. The buffer is empty at every
        checkpoint (one is taken right after each aggregation); jobs in flight are lost with the server and a
        resumed run dispatches every client anew with the current model."""
        return {self.state_prefix: {
            "sim-time": np.array([self.sim_time], np.float64), "rng": rng_to_array(self.rng),
            # (version, node, τ) rows; node ids are uint64, stored bit for bit in int64 (checkpoints hold tensors)
            "staleness": np.asarray(self.staleness, np.uint64).reshape(-1, 3).view(np.int64),
        }}

    def load_own_state_dict(self, state: StrategyState) -> None:
        """Restore `own_state_dict`'s clock and history."""
        if self.state_prefix in state:
            group = state[self.state_prefix]
            self.sim_time = float(group["sim-time"][0])
            rng_from_array(self.rng, group["rng"])
            rows = np.asarray(group["staleness"], np.int64).reshape(-1, 3).view(np.uint64)
            self.staleness = [tuple(int(x) for x in row) for row in rows]

    # Flower's Strategy interface: the event loop in `start` replaces Flower's synchronous rounds.
    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        raise NotImplementedError("AsyncBuffer aggregates inside start(); it has no synchronous round")

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                           ) -> list[Message]:
        """No client-side evaluation: the server evaluates each new version."""
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Nothing to aggregate (see `configure_evaluate`)."""
        return None

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(INFO, "\t├──> AsyncBuffer: K=%d, s(τ)=(1+τ)^-%s, η=%s, speed σ=%s", self.buffer_size,
            self.staleness_exponent, self.server_lr, self.speed_sigma)
        self.strategy.summary()

    # --- the event loop -------------------------------------------------------------------
    def start(  # pylint: disable=too-many-locals
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Run until `num_rounds` aggregations have been made."""
        log(INFO, "Starting %s strategy:", type(self).__name__)
        self.summary()
        train_config = train_config or ConfigRecord()
        result = Result()
        if evaluate_fn:
            res = evaluate_fn(0, initial_arrays)
            if res is not None:
                result.evaluate_metrics_serverapp[0] = res

        offset = self.strategy.round_offset
        x = to_numpy(initial_arrays)
        version = 0
        models = {0: x}                     # versions still referenced by in-flight jobs
        # the grid's order (by partition under PartitionOrderGrid), not node ids: the SuperLink draws those anew
        # per run, and the first dispatches' sequence numbers decide ties on the clock and each attempt's
        # availability draw on the client
        node_ids = list(grid.get_node_ids())
        clocked = self.strategy.systems is not None
        speeds = None if clocked else (self.speeds or client_speeds(node_ids, self.speed_sigma, self.seed))
        in_flight: dict[str, Job] = {}      # message id -> job; its finish_time is a lower bound until it replies
        ready: list[tuple[float, int, Job, Message | None]] = []  # replies in, by exact finish time
        before_upload: dict[int, float] = {}  # node -> download + compute seconds of its last reply
        seq = 0
        last_aggregation = self.sim_time

        def dispatch(node: int) -> None:
            nonlocal seq
            start, info = self.prepare_dispatch(version, models)
            config = ConfigRecord({**dict(train_config), keys.ATTEMPT: seq})
            # The wrapped strategy sees the true (offset) round through its schedule mixin.
            msgs = list(self.strategy.configure_train(version + 1, to_record(start), config, SubsetGrid(grid, [node])))
            (msg_id,) = list(grid.push_messages(msgs))
            if clocked:  # known once it replies; until then it cannot finish before its download + compute
                bound = self.sim_time + before_upload.get(node, 0.0)
            else:
                bound = self.sim_time + speeds[node] * float(self.rng.uniform(1.0 - self.jitter, 1.0 + self.jitter))
            in_flight[msg_id] = Job(bound, seq, node, version, msg_id, info, dispatch_time=self.sim_time)
            seq += 1

        for node in node_ids:
            dispatch(node)

        buffer: list[Arrival] = []
        wall_deadline = time.time() + timeout * max(num_rounds, 1)
        while version < num_rounds:
            earliest_pending = min((j.finish_time for j in in_flight.values()), default=float("inf"))
            if not ready or ready[0][0] > earliest_pending:  # an in-flight job may still finish first
                if time.time() > wall_deadline:
                    job = min(in_flight.values(), key=lambda j: j.finish_time)
                    log(WARNING, "AsyncBuffer: no reply from node %d before the deadline; dropping it", job.node_id)
                    heapq.heappush(ready, (job.finish_time, job.seq, in_flight.pop(job.message_id), None))
                elif not self._collect(grid, in_flight, ready, before_upload, clocked):
                    time.sleep(self.poll_interval)
                continue
            finish, _, job, reply = heapq.heappop(ready)
            self.sim_time = finish
            tau = version - job.version
            round_no = version + 1 + offset
            arrival = None
            if reply is not None:
                kept = self.strategy.filter_train_replies(round_no, [reply])
                if kept:
                    arrival = self.contribution(kept[0], job, models, tau)
            if arrival is not None:
                buffer.append(arrival)
                self.staleness.append((version + 1, job.node_id, tau))
            if len(buffer) >= self.buffer_size:
                x = self.apply_buffer(x, buffer, round_no)
                version += 1
                models[version] = x
                taus = [a.tau for a in buffer]
                extra = self.strategy.rounds[version + offset].extra
                extra.update({"staleness-mean": float(np.mean(taus)), "staleness-max": int(max(taus)),
                              "staleness": taus, "sim-time": self.sim_time, "buffer-size": len(buffer)})
                if clocked:  # the recorder sums these into sim-time-s
                    extra["round-sim-time-s"] = self.sim_time - last_aggregation
                last_aggregation = self.sim_time
                buffer = []
                self.strategy.record_round_stats(version + offset)
                result.arrays = to_record(x)
                if evaluate_fn:
                    res = evaluate_fn(version, to_record(x))
                    if res is not None:
                        result.evaluate_metrics_serverapp[version] = res
            if version < num_rounds:
                dispatch(job.node_id)
            # forget model versions no in-flight or arrived job started from
            live = {j.version for j in in_flight.values()} | {r[2].version for r in ready} | {version}
            for v in [v for v in models if v not in live]:
                del models[v]
        log(INFO, "%s: %d aggregations, %d updates, mean staleness %.2f, simulated time %.1f", type(self).__name__,
            version, len(self.staleness), float(np.mean([t for *_, t in self.staleness] or [0])), self.sim_time)
        return result

    def _collect(self, grid: Grid, in_flight: dict[str, Job], ready: list, before_upload: dict[int, float],
                 clocked: bool) -> bool:
        """Pull the replies that are in; give each its exact finish time. False if none came."""
        replies = list(grid.pull_messages(list(in_flight))) if in_flight else []
        for msg in replies:
            job = in_flight.pop(msg.metadata.reply_to_message_id)
            finish = job.finish_time
            if clocked:
                timing = None
                if not msg.has_error():
                    try:
                        timing = self.strategy.client_time(msg, read_metadata(msg.content), remember=True)
                    except (MetadataError, ProfileError):
                        timing = None  # a bad reply: the wrapped strategy's checks will refuse it
                if timing is not None:
                    before_upload[job.node_id] = timing.download_s + timing.compute_s
                    finish = job.dispatch_time + timing.total_s
                else:  # it dropped out (or sent garbage) after the work it would have done
                    finish = job.dispatch_time + max(before_upload.get(job.node_id, 0.0), MIN_FAILED_JOB_S)
            heapq.heappush(ready, (finish, job.seq, job, msg))
        return bool(replies)

    # --- the update rule (FedBuff); subclasses override these -------------------------------
    def prepare_dispatch(self, version: int, models: dict[int, dict[str, np.ndarray]]
                         ) -> tuple[dict[str, np.ndarray], Any]:
        """(parameters a client dispatched now starts from, anything to remember for its job)."""
        return models[version], None

    def contribution(self, reply: Message, job: Job, models: dict[int, dict[str, np.ndarray]],
                     tau: int) -> Arrival | None:
        """A checked reply's Δ (relative to the version it started from), weighted n · s(τ); None: nothing to add."""
        delta = self.strategy.reply_delta(reply, models[job.version])
        if delta is None:
            return None
        n = float(next(iter(reply.content.metric_records.values()))["num-examples"])
        return Arrival(delta, n * staleness_weight(tau, self.staleness_exponent), tau, job)

    def apply_buffer(self, x: dict[str, np.ndarray], buffer: list[Arrival], round_no: int) -> dict[str, np.ndarray]:
        """x + η · (weighted mean of the buffered updates): the new model version."""
        step = mean_arrays([a.update for a in buffer], [a.weight for a in buffer])
        return {k: (x[k] + self.server_lr * step[k]).astype(x[k].dtype) for k in x}
