"""FedPG: synchronous federated policy gradient — average the clients' gradient estimates, take one ascent step.

Each round the M sampled clients receive θ_k, sample trajectories with π_θk and reply with
ĝ_m(θ_k) (ArrayRecord "gradient"; see `fedrl_app.client.policy_gradient`). The server ascends

    θ_{k+1} = θ_k + η · (1/M) · Σ_m ĝ_m(θ_k)

with η = `pg-lr`. The global model is the policy network; clients never send parameters.

Every round also records, in `rounds[r].extra` (and so in metrics.jsonl): env steps this round
and in total, gradient uploads this round and in total, the step's norm, and a simulated clock.
The clock uses the asynchronous strategies' speed model (`client_speeds`: log-normal slowness,
seeded, times U(1 − jitter, 1 + jitter) per job), so a synchronous round lasts as long as its
slowest client and "return vs simulated time" is comparable with AFedPG.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg
from flwr.supercore import log

from fedrl_app.protocol import keys
from fedrl_app.protocol.metadata import ClientMetadata
from fedrl_app.protocol.payload import PayloadError, bound_norm
from fedrl_app.protocol.records import to_numpy, to_record
from strategies.async_buffer import client_speeds
from strategies.reply_guard import ReplyGuardMixin
from strategies.round_schedule import RoundScheduleMixin
from strategies.strategy_utils import mean_arrays, rng_from_array, rng_to_array, squared_norm


class FedPG(RoundScheduleMixin, ReplyGuardMixin, FlowerFedAvg):
    """Synchronous federated policy gradient with a plain averaged ascent step.

    Parameters
    ----------
    lr : float (default: 0.001)
        η, the server's ascent step on the mean gradient (`pg-lr`); constant over rounds and
        sent to clients as "lr" (LAPG clients need it for their lazy condition).
    speed_sigma : float (default: 1.0)
        σ of the clients' log-normal simulated slowness, for the simulated clock only.
    seed : int (default: 0)
        Seeds the simulated clock.
    jitter : float (default: 0.1)
        Each job lasts slowness × U(1 − jitter, 1 + jitter).
    speeds : dict[int, float], optional
        Explicit per-node slowness (overrides `speed_sigma`), for tests.
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg`; the minimum node counts default to 1
        so a single client can train.
    """

    reply_array_records = (keys.GRADIENT,)

    def __init__(self, *, lr: float = 0.001, speed_sigma: float = 1.0, seed: int = 0, jitter: float = 0.1,
                 speeds: dict[int, float] | None = None, **kwargs) -> None:
        for key in ("min_train_nodes", "min_evaluate_nodes", "min_available_nodes"):
            kwargs.setdefault(key, 1)
        super().__init__(**kwargs)
        self.configure_schedule(lr, 1.0, 1)
        self.speed_sigma, self.seed, self.jitter, self.speeds = speed_sigma, seed, jitter, speeds
        self._clock_rng = np.random.default_rng(seed + 1)
        self._node_ids: list[int] = []
        self.current: dict[str, np.ndarray] | None = None
        self.sim_time = 0.0
        self.env_steps_total = 0
        self.uploads_total = 0

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(INFO, "\t├──> %s: server step η=%s (ascent on the mean client gradient)", type(self).__name__, self.lr)
        super().summary()

    # --- messages ---------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send θ_k; the clients (role "policy-gradient") reply with a gradient estimate."""
        self.current = to_numpy(arrays)
        self._node_ids = list(grid.get_node_ids())  # by partition under PartitionOrderGrid (node ids change per run)
        return super().configure_train(server_round, arrays, config, grid)

    def check_reply_arrays(self, msg: Message, meta: ClientMetadata) -> None:
        """The gradient must match the policy's keys, shapes and dtypes; only LAPG accepts lazy skips."""
        if meta.gradient_uploaded is False:
            raise PayloadError(f"a lazy skip is not allowed with {type(self).__name__}; send the gradient")
        super().check_reply_arrays(msg, meta)

    def state_dict(self) -> dict[str, dict[str, np.ndarray]]:
        """The simulated clock (its time and random stream) and the env-step and upload totals. (The speeds are
        drawn again in the grid's node order, by partition: a resumed run's nodes have new ids.) Also the reply
        guard's groups."""
        return {**super().state_dict(), "fedpg": {
            "totals": np.array([self.sim_time, self.env_steps_total, self.uploads_total], np.float64),
            "clock-rng": rng_to_array(self._clock_rng),
        }}

    def load_state_dict(self, state: dict[str, dict[str, np.ndarray]]) -> None:
        """Restore `state_dict`'s clock and totals, and the reply guard's groups."""
        super().load_state_dict(state)
        if "fedpg" not in state:
            return
        group = state["fedpg"]
        sim_time, env_steps, uploads = (float(x) for x in group["totals"])
        self.sim_time, self.env_steps_total, self.uploads_total = sim_time, int(env_steps), int(uploads)
        rng_from_array(self._clock_rng, group["clock-rng"])

    def bound_reply(self, msg: Message) -> float | None:
        """Norm bounding of the gradient estimate (the update a policy-gradient client sends)."""
        if self.max_update_norm <= 0 or keys.GRADIENT not in msg.content.array_records:
            return None
        gradient = to_numpy(msg.content[keys.GRADIENT])
        bounded, norm = bound_norm(gradient, self.max_update_norm)
        if bounded is gradient:
            return None
        msg.content[keys.GRADIENT] = to_record(bounded)
        return norm

    # --- aggregation --------------------------------------------------------------------------
    def round_direction(self, server_round: int, replies: list[Message]) -> dict[str, np.ndarray]:
        """(1/M) Σ_m ĝ_m: the mean of this round's gradients."""
        return mean_arrays([to_numpy(m.content[keys.GRADIENT]) for m in replies])

    def aggregate_valid_replies(
        self, server_round: int, replies: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """θ + η · direction; round statistics and the simulated clock go to the round log."""
        self.advance_clock(server_round)
        self.record_round_stats(server_round)
        if not replies or self.current is None:
            return None, None
        direction = self.round_direction(server_round, replies)
        step = {k: self.lr * direction[k].astype(np.float64) for k in direction}
        new = {k: (self.current[k] + step[k]).astype(self.current[k].dtype) for k in self.current}
        self.rounds[server_round].extra["step-norm"] = float(np.sqrt(squared_norm(step)))
        self.after_step(server_round, self.current, new)
        metrics = self.train_metrics_aggr_fn([m.content for m in replies], self.weighted_by_key)
        return to_record(new), metrics

    def after_step(self, server_round: int, old: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> None:
        """Called with θ_k and θ_{k+1} after each step (LAPG keeps the step norms)."""

    def record_round_stats(self, server_round: int) -> None:
        """Env steps, uploads and client gradient norms of a round's accepted reports."""
        round_log = self.rounds[server_round]
        reports = [r.metadata for r in round_log.reports]
        steps = sum(m.env_steps or 0 for m in reports)
        uploads = sum(m.gradient_uploaded is not False for m in reports)
        self.env_steps_total += steps
        self.uploads_total += uploads
        round_log.extra.update({"env-steps": steps, "env-steps-total": self.env_steps_total, "uploads": uploads,
                                "uploads-total": self.uploads_total})
        norms = [m.gradient_norm for m in reports if m.gradient_norm is not None]
        if norms:
            round_log.extra["client-gradient-norm"] = float(np.mean(norms))

    def advance_clock(self, server_round: int) -> None:
        """A synchronous round lasts as long as its slowest replying client's job: on the virtual clock
        (`configure_clock`, every run), as the reply checks timed it; without one, by the speed draw."""
        round_log = self.rounds[server_round]
        if self.systems is not None:
            self.sim_time += float(round_log.extra.get("round-sim-time-s", 0.0))
            round_log.extra["sim-time"] = self.sim_time
            return
        rank = {n: i for i, n in enumerate(self._node_ids)}  # jitter draws in the grid's order, unknown nodes last
        nodes = sorted({r.node_id for r in round_log.reports} | {n for n, _ in round_log.dropped},
                       key=lambda n: (rank.get(n, len(rank)), n))
        if self.speeds is None:
            self.speeds = client_speeds(self._node_ids or nodes, self.speed_sigma, self.seed)
        durations = [self.speeds.get(n, 1.0) * float(self._clock_rng.uniform(1 - self.jitter, 1 + self.jitter))
                     for n in nodes]
        self.sim_time += max(durations, default=0.0)
        round_log.extra["sim-time"] = self.sim_time
