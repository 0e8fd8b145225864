"""The wrapper contract: what a wrapper (clustering, async buffer, DP) needs from the strategy it wraps, and its base.

Flower's own wrappers (`DifferentialPrivacy*FixedClipping`) hold the wrapped strategy as
`self.strategy`; ours do the same. A wrapper reaches the wrapped strategy only through
`CheckedStrategy`, the interface every strategy of this package provides (ReplyGuardMixin and
RoundScheduleMixin supply it, a strategy overrides what it does differently). The round logs,
the resume offset and the checkpoint state are the wrapped strategy's; a wrapper adds its own
state groups beside them under names that are its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from strategies.reply_guard import RoundLog

StrategyState = dict[str, dict[str, np.ndarray]]  # group name -> arrays; what a checkpoint stores


@runtime_checkable
class CheckedStrategy(Protocol):
    """What a wrapper may use of the strategy it wraps."""

    rounds: dict[int, RoundLog]   # per-round reports, drops and extra series, read by the run recorder
    round_offset: int             # rounds done before a resume; Flower's loop counter restarts at 1
    weighted_by_key: str          # the metric that weights a reply (Flower's FedAvg: "num-examples")
    min_train_nodes: int
    min_evaluate_nodes: int
    min_available_nodes: int
    fraction_evaluate: float

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> Iterable[Message]:
        """Messages for this round's training (the round is Flower's; the schedule adds the offset)."""

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                           ) -> Iterable[Message]:
        """Messages for this round's client-side evaluation."""

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Checked, aggregated evaluation metrics."""

    def filter_train_replies(self, server_round: int, replies: Iterable[Message]) -> list[Message]:
        """The replies that pass every check (the others are logged and recorded as dropped)."""

    def aggregate_checked(self, server_round: int, kept: list[Message]
                          ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate replies `filter_train_replies` kept (round = the true round)."""

    def reply_delta(self, msg: Message, start: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """The update a checked reply carries relative to `start` (None: the client sent none)."""

    def drop_accepted_reply(self, server_round: int, msg: Message, reason: str) -> None:
        """Take back a reply `filter_train_replies` accepted (a wrapper's own check refused it)."""

    def record_round_stats(self, server_round: int) -> None:
        """Write the strategy's per-round series into `rounds[server_round].extra`."""

    def configure_example_caps(self, known: dict[int, int] | None = None, median_factor: float = 3.0) -> None:
        """Cap the claimed `num-examples` of each reply (its aggregation weight)."""

    def configure_sampling(self, seed: int | None) -> None:
        """Sample each round's nodes from a stream fixed by `seed` and the round (None: Flower's unseeded draw)."""

    def state_dict(self) -> StrategyState:
        """Everything a resumed run needs, as named groups of arrays."""

    def load_state_dict(self, state: StrategyState) -> None:
        """Restore what `state_dict` returned."""

    def summary(self) -> None:
        """Log the strategy's settings."""


@runtime_checkable
class DeploysOtherModel(Protocol):
    """A strategy whose model for use differs from the global model it sends the clients (Fusion with
    `deploy = "average"`). The run recorder evaluates and saves `deployed_arrays(sent)`; a wrapper does not
    forward it, so a wrapper that changes the aggregate (DP noise, say) always deploys what it sends."""

    def deployed_arrays(self, sent: ArrayRecord) -> ArrayRecord:
        """The run's model after the round whose global model is `sent`."""


def innermost(strategy: Any) -> CheckedStrategy:
    """The CheckedStrategy at the bottom of a stack of wrappers (the strategy itself if it wraps nothing)."""
    while isinstance(strategy, WrapsStrategy):
        strategy = strategy.strategy
    return strategy


class WrapsStrategy:
    """Delegation to `self.strategy` of the round logs, the resume offset and the checkpoint state.

    A mixin, so that Flower's DP wrappers (which set `self.strategy` themselves) can use it too.
    Subclasses name their own checkpoint groups in `own_state_dict` / `load_own_state_dict`.
    """

    strategy: CheckedStrategy
    required_settings: ClassVar[dict[str, Any]] = {}  # what the wrapped strategy must be built with
    state_prefix: ClassVar[str] = ""  # this wrapper's checkpoint groups are named `prefix` or `prefix/...`

    @classmethod
    def check_wrapped(cls, strategy: Any) -> None:
        """Refuse a strategy without the `CheckedStrategy` interface or without `required_settings`."""
        if not isinstance(strategy, CheckedStrategy):
            raise TypeError(f"{cls.__name__} wraps a CheckedStrategy (this package's strategies); "
                            f"got {type(strategy).__name__}")
        wrong = {k: getattr(strategy, k, None) for k, v in cls.required_settings.items()
                 if getattr(strategy, k, None) != v}
        if wrong:
            raise ValueError(f"{cls.__name__} needs the wrapped strategy built with {cls.required_settings}; "
                             f"it has {wrong}")

    @property
    def rounds(self) -> dict[int, RoundLog]:
        """Per-round logs (reports, drops, extra series) for the run recorder."""
        return self.strategy.rounds

    @property
    def round_offset(self) -> int:
        """Rounds done before a resume (the wrapped strategy's)."""
        return self.strategy.round_offset

    @round_offset.setter
    def round_offset(self, value: int) -> None:
        for strategy in self.wrapped_strategies():
            strategy.round_offset = value

    def wrapped_strategies(self) -> list[CheckedStrategy]:
        """Every strategy instance this wrapper drives (the one it wraps; Clustered adds its per-cluster copies)."""
        return [self.strategy]

    def _is_own_group(self, name: str) -> bool:
        return bool(self.state_prefix) and (name == self.state_prefix or name.startswith(self.state_prefix + "/"))

    def state_dict(self) -> StrategyState:
        """The wrapped strategy's groups and this wrapper's own."""
        own = self.own_state_dict()
        if stray := [k for k in own if not self._is_own_group(k)]:
            raise ValueError(f"{type(self).__name__}: state groups {stray} are not under prefix {self.state_prefix!r}")
        inner = self.strategy.state_dict()
        if clash := [k for k in inner if self._is_own_group(k)]:
            raise ValueError(f"{type(self).__name__}: the wrapped strategy's state groups {clash} use this wrapper's "
                             f"prefix {self.state_prefix!r}")
        return {**inner, **own}

    def load_state_dict(self, state: StrategyState) -> None:
        """Split the groups by `state_prefix`: this wrapper's own, the rest to the wrapped strategy."""
        self.load_own_state_dict({k: v for k, v in state.items() if self._is_own_group(k)})
        self.strategy.load_state_dict({k: v for k, v in state.items() if not self._is_own_group(k)})

    def own_state_dict(self) -> StrategyState:
        """This wrapper's checkpoint groups, each named `state_prefix` or `state_prefix/...` (none by default)."""
        return {}

    def load_own_state_dict(self, state: StrategyState) -> None:
        """Restore `own_state_dict`'s groups (missing ones keep their fresh values)."""


class StrategyWrapper(WrapsStrategy, Strategy):
    """Base of this package's wrappers: hold `strategy`, delegate per-message work to it, add a rule around it.

    Parameters
    ----------
    strategy : CheckedStrategy
        The wrapped strategy, built with `required_settings` (the registry does that).
    """

    def __init__(self, strategy: CheckedStrategy) -> None:
        self.check_wrapped(strategy)
        self.strategy = strategy

    def summary(self) -> None:
        """Log the wrapper, then the wrapped strategy."""
        log(INFO, "\t├──> %s around:", type(self).__name__)
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> Iterable[Message]:
        """The wrapped strategy's messages."""
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check with the wrapped strategy, then aggregate with it (wrappers override this)."""
        true_round = server_round + self.round_offset
        return self.strategy.aggregate_checked(true_round, self.strategy.filter_train_replies(true_round, replies))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                           ) -> Iterable[Message]:
        """The wrapped strategy's evaluation messages."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """The wrapped strategy's evaluation aggregate."""
        return self.strategy.aggregate_evaluate(server_round, replies)
