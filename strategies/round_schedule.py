"""RoundScheduleMixin: per-round learning rate, a round offset for resumed runs, and seeded node sampling."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedrl_app.protocol import keys
from strategies.strategy_utils import seeded_sampling


def lr_at_round(lr: float, decay_factor: float, decay_every: int, server_round: int) -> float:
    """Step-decayed learning rate for a round: lr * factor ** (round // every)."""
    return lr * decay_factor ** (server_round // decay_every)


class RoundScheduleMixin:
    """Send `lr * lr_decay_factor ** (round // lr_decay_every)` to clients each round.

    The learning rate is computed from the round into a fresh ConfigRecord; the config
    shared across rounds is never mutated. `round_offset` shifts Flower's loop counter
    (which restarts at 1) so a resumed run continues its round numbers and schedule: this
    mixin is the one place that adds it, so every class after it in the bases, and every
    wrapper (through `strategies.wrapper.WrapsStrategy`), sees the true round.

    With `configure_sampling(seed)`, the nodes Flower samples each round (fraction-train or
    fraction-evaluate < 1) are drawn from a stream fixed by the seed and the true round
    (`strategies.strategy_utils.seeded_sampling`).

    Place it first in the bases. Its `super()` calls reach the Flower strategy further down
    the bases, which mypy cannot see from the mixin (hence the `type: ignore[misc]`s).
    """

    round_offset: int = 0
    lr: float = 0.05
    lr_decay_factor: float = 0.5
    lr_decay_every: int = 5
    sampling_seed: int | None = None

    def configure_schedule(
        self, lr: float, lr_decay_factor: float, lr_decay_every: int, round_offset: int = 0
    ) -> None:
        """Set the schedule (kept out of __init__ so Flower's signatures stay intact)."""
        self.lr, self.lr_decay_factor, self.lr_decay_every = lr, lr_decay_factor, lr_decay_every
        self.round_offset = round_offset

    def configure_sampling(self, seed: int | None) -> None:
        """Draw each round's sample of nodes from a stream fixed by `seed` and the round (None: unseeded)."""
        self.sampling_seed = seed

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Inject this round's learning rate, then defer to the strategy."""
        server_round += self.round_offset
        config = ConfigRecord(dict(config))
        config[keys.LR] = lr_at_round(self.lr, self.lr_decay_factor, self.lr_decay_every, server_round)
        with seeded_sampling(self.sampling_seed, server_round, "train"):
            return list(super().configure_train(server_round, arrays, config, grid))  # type: ignore[misc]  # see class doc

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Defer with the true round."""
        return super().aggregate_train(server_round + self.round_offset, replies)  # type: ignore[misc]  # see class doc

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Defer with the true round (on a copy of the config)."""
        config = ConfigRecord(dict(config))
        server_round += self.round_offset
        with seeded_sampling(self.sampling_seed, server_round, "evaluate"):
            return list(super().configure_evaluate(server_round, arrays, config, grid))  # type: ignore[misc]  # see class doc

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Defer with the true round."""
        return super().aggregate_evaluate(server_round + self.round_offset, replies)  # type: ignore[misc]  # see class doc
