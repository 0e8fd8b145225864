"""Differential privacy: Flower's fixed-clipping DP wrappers around a checked strategy, with ε tracked per round.

Central DP at the client (user) level, as in McMahan et al., "Learning Differentially Private
Recurrent Language Models" (2018) and Flower's `DifferentialPrivacy*FixedClipping`: each client's
update Δ_i = θ_i − θ is clipped to ‖Δ_i‖ ≤ C (by the server, or by the client with Flower's
`fixedclipping_mod`), the clipped models are averaged with equal weights, and Gaussian noise
N(0, (z·C/n)²) is added to the average, n being the number of clients sampled per round.

Flower's wrappers and helpers do the clipping, the noise and the accounting; this module adds what
a federation with untrusted clients needs around them:

- replies are checked (ReplyGuardMixin's `filter_train_replies`, then its `aggregate_checked`
  aggregates them) *before* they are clipped, so a reply with a wrong shape
  or NaN is dropped with a log line instead of crashing the clipping; a zero update (the model
  sent back unchanged), on which Flower's clipping divides by zero, is left as it is;
- every client weighs the same (a client's declared `num-examples` is not trusted, and the
  sensitivity C/n holds only for a plain mean);
- client-side clipping is verified: a reply whose update is longer than C is refused;
- ε is accounted with Flower's RDP accountant (Google's dp-accounting), one Gaussian release per
  aggregated round, without sampling amplification (all sampled clients reply, as Flower's
  accounted mode requires). When m < n replies survive the checks, the noise, calibrated for n,
  is large relative to the sensitivity C/m of a mean of m: that round composes noise multiplier
  z·m/n. ε, δ and the noise's standard deviation go into the round log (`dp-epsilon`, ...).
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
)
from flwr.supercore import log
from flwr.supercore.differential_privacy import compute_clip_model_update, compute_stdv
from flwr.supercore.privacy_accounting import GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig, SamplingMethod
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from fedrl_app.protocol import keys
from fedrl_app.protocol.records import to_numpy
from strategies.strategy_utils import distance
from strategies.wrapper import StrategyState, WrapsStrategy

CLIP_TOLERANCE = 1e-4  # relative slack for float32 rounding in a client's clipped update


class _Accounted(WrapsStrategy):
    """Shared by both wrappers: check, equal weights, account ε; delegate round logs and state to the inner strategy."""

    state_prefix = "dp"
    noise_multiplier: float
    clipping_norm: float
    num_sampled_clients: int

    def _setup(self, target_delta: float) -> None:
        self.target_delta = target_delta
        self.population: int | None = None
        self.released: list[float] = []  # noise multiplier of each release, in order (checkpointed)
        self._accountant: RdpAccountant | None = None

    def _sample(self, messages: list[Message], grid) -> list[Message]:
        """n = the clients sampled this round; the accountant starts once the population is known."""
        if messages:
            self.num_sampled_clients = len(messages)
        if self.population is None:
            self.population = max(len(list(grid.get_node_ids())), self.num_sampled_clients)
            self._accountant = self._new_accountant()
            for z in self.released:  # a resumed run: replay the releases made before the stop
                self._compose(z, record=False)
        return messages

    def _new_accountant(self) -> RdpAccountant | None:
        if self.noise_multiplier <= 0:
            return None  # no noise: no finite ε; say so in the log rather than report a number
        config = PrivacyConfig(target_delta=self.target_delta, population_size=self.population,
                               neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                               sampling_method=SamplingMethod.NO_AMPLIFICATION)
        return RdpAccountant(config)

    # --- checkpoint state (the wrapped strategy's logs, offset and state: WrapsStrategy) -------------
    def own_state_dict(self) -> StrategyState:
        """The noise multiplier of every release so far."""
        return {"dp": {"released-noise-multipliers": np.asarray(self.released, np.float64)}}

    def load_own_state_dict(self, state: StrategyState) -> None:
        """Restore the releases already made (replayed into the accountant on the next round), so ε keeps counting."""
        released = state.get("dp", {}).get("released-noise-multipliers", np.zeros(0))
        self.released, self.population, self._accountant = np.asarray(released, np.float64).tolist(), None, None

    # --- aggregation (rounds here are the true ones: Flower's loop counter + round_offset) ----------
    def _check_replies(self, true_round: int, replies: Iterable[Message]) -> list[Message]:
        """The inner strategy's checks, then equal weights (and, client-side, the clip bound)."""
        kept = self.strategy.filter_train_replies(true_round, replies)
        kept = [m for m in kept if self._clip_ok(true_round, m)]
        key = self.strategy.weighted_by_key
        for msg in kept:
            next(iter(msg.content.metric_records.values()))[key] = 1.0
        return kept

    def _clip_ok(self, true_round: int, msg: Message) -> bool:
        return True

    def _account(self, true_round: int, num_replies: int) -> None:
        extra = self.strategy.rounds[true_round].extra
        extra["dp-noise-stdev"] = compute_stdv(self.noise_multiplier, self.clipping_norm, self.num_sampled_clients)
        extra["dp-clipped-replies"] = num_replies
        if self._accountant is None:
            log(WARNING, "round %d: DP noise multiplier is 0: updates are clipped but nothing is private", true_round)
            return
        self._compose(self.noise_multiplier * num_replies / self.num_sampled_clients)
        spent = self._accountant.get_privacy_spent()
        extra.update({"dp-epsilon": spent.epsilon, "dp-delta": spent.delta, "dp-releases": spent.num_releases})

    def _compose(self, noise_multiplier: float, record: bool = True) -> None:
        if record:
            self.released.append(noise_multiplier)
        if self._accountant is None:
            return
        # No amplification: the sample size is reported, not used, by the accountant.
        sample = min(self.num_sampled_clients, self.population)
        self._accountant.compose(GaussianPrivacyEvent(noise_multiplier=noise_multiplier, sample_size=sample,
                                                      population_size=self.population))
        if record:
            spent = self._accountant.get_privacy_spent()
            log(INFO, "DP: ε=%.4g at δ=%g after %d releases", spent.epsilon, spent.delta, spent.num_releases)

    def _clip(self, true_round: int, replies: list[Message]) -> None:
        """Client-side mode: the clients clipped (and `_clip_ok` checked it)."""

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check, clip, average with equal weights, add Flower's Gaussian noise, account ε."""
        true_round = server_round + self.strategy.round_offset
        kept = self._check_replies(true_round, replies)
        if not kept:
            return None, None
        self._clip(true_round, kept)
        arrays, metrics = self.strategy.aggregate_checked(true_round, kept)
        if arrays is not None:
            arrays = self._add_noise_to_aggregated_arrays(arrays)
            self._account(true_round, len(kept))
        return arrays, metrics


class ServerSideDP(_Accounted, DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed clipping around a checked FedAvg/FedProx, with ε per round.

    Parameters
    ----------
    strategy : FedAvg or FedProx (this package's, with ReplyGuardMixin)
    noise_multiplier : float
        z; the noise added to the mean has standard deviation z·C/n, n the clients sampled that round.
    clipping_norm : float
        C, the largest update norm a client can contribute.
    target_delta : float (default: 1e-5)
        δ at which ε is reported.
    """

    def __init__(self, strategy, noise_multiplier: float, clipping_norm: float, *, target_delta: float = 1e-5
                 ) -> None:
        self.check_wrapped(strategy)
        super().__init__(strategy, noise_multiplier, clipping_norm, num_sampled_clients=1)
        self._setup(target_delta)

    def configure_train(self, server_round, arrays, config, grid):
        """Flower's (remembers the model sent); n and the population come from this round's sample."""
        return self._sample(list(super().configure_train(server_round, arrays, config, grid)), grid)

    def _clip(self, true_round: int, replies: list[Message]) -> None:
        """Flower's fixed clipping of each update θ_i − θ to norm C, in place; log the norms seen (to choose C).

        Flower divides by the update's norm, so a client that sends the model back unchanged would
        crash the server: a zero update is left as it is (clipping is the identity there).
        """
        sent = to_numpy(self.current_arrays)
        norms = []
        for msg in replies:
            returned = to_numpy(msg.content[keys.ARRAYS])
            norms.append(distance(returned, sent))
            if norms[-1] == 0.0:
                continue
            clipped = list(returned.values())
            compute_clip_model_update(param1=clipped, param2=[sent[k] for k in returned], clipping_norm=self.clipping_norm)
            msg.content[keys.ARRAYS] = ArrayRecord({k: Array(np.asarray(v)) for k, v in zip(returned, clipped)})
        self.strategy.rounds[true_round].extra.update({
            "dp-update-norm-median": float(np.median(norms)),
            "dp-clipped-fraction": float(np.mean([n > self.clipping_norm for n in norms])),
        })


class ClientSideDP(_Accounted, DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side fixed clipping (clients run `fixedclipping_mod`), with the clip verified and ε per round.

    Parameters are those of :class:`ServerSideDP`. A client is not trusted to clip: a reply whose
    update norm exceeds C (beyond float32 rounding) is dropped with a log line.
    """

    def __init__(self, strategy, noise_multiplier: float, clipping_norm: float, *, target_delta: float = 1e-5
                 ) -> None:
        self.check_wrapped(strategy)
        super().__init__(strategy, noise_multiplier, clipping_norm, num_sampled_clients=1)
        self._setup(target_delta)
        self._sent: dict[str, np.ndarray] | None = None

    def configure_train(self, server_round, arrays, config, grid):
        """Flower's (sends C to the clients); remember the model sent, to measure each returned update."""
        self._sent = to_numpy(arrays)
        return self._sample(list(super().configure_train(server_round, arrays, config, grid)), grid)

    def _clip_ok(self, true_round: int, msg: Message) -> bool:
        norm = distance(to_numpy(msg.content[keys.ARRAYS]), self._sent)
        if norm <= self.clipping_norm * (1 + CLIP_TOLERANCE):
            return True
        self.strategy.drop_accepted_reply(
            true_round, msg, f"update norm {norm:.4g} exceeds the DP clipping norm {self.clipping_norm:g} "
                             "(client did not clip)")
        return False

