"""SCAFFOLD (Karimireddy et al., 2020): stochastic controlled averaging with control variates."""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg
from flwr.supercore import log

from fedrl_app.protocol import keys
from fedrl_app.protocol.records import to_numpy, to_record
from strategies.reply_guard import ReplyGuardMixin
from strategies.round_schedule import RoundScheduleMixin
from strategies.strategy_utils import mean_arrays


class Scaffold(RoundScheduleMixin, ReplyGuardMixin, FlowerFedAvg):
    """SCAFFOLD with option-II client control variates.

    The server keeps the global control variate c and sends it beside the model as a
    second ArrayRecord (`"control"`). Each client i corrects every gradient by
    (c − c_i), keeps c_i in its `context.state`, and returns its new weights y_i and
    Δc_i = c_i⁺ − c_i (`"control-delta"`), where c_i⁺ = c_i − c + (x − y_i)/(K·η_l).
    The server then applies, over the sampled set S of N clients in total:

    x ← x + η_g · (1/|S|) Σ (y_i − x),    c ← c + (|S|/N) · (1/|S|) Σ Δc_i

    Parameters
    ----------
    global_lr : float (default: 1.0)
        Server step size η_g.
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg`.
    """

    reply_array_records = (keys.ARRAYS, keys.CONTROL_DELTA)

    def __init__(self, *, global_lr: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.global_lr = global_lr
        self.control: dict[str, np.ndarray] | None = None
        self.current: dict[str, np.ndarray] | None = None
        self.num_total_nodes = 0

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(INFO, "\t├──> SCAFFOLD settings:")
        log(INFO, "\t│\t└── global lr (η_g): %s", self.global_lr)
        super().summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the global model and the global control variate c."""
        self.current = to_numpy(arrays)
        if self.control is None:
            self.control = {k: np.zeros_like(v) for k, v in self.current.items()}
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.num_total_nodes = len(list(grid.get_node_ids()))
        control = to_record(self.control)
        for msg in messages:
            msg.content[keys.CONTROL] = control
        return messages

    def aggregate_valid_replies(
        self, server_round: int, replies: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Apply the SCAFFOLD server update to the checked replies."""
        if not replies or self.current is None or self.control is None:
            return None, None
        contents = [msg.content for msg in replies]
        new_weights = [to_numpy(c[keys.ARRAYS]) for c in contents]
        control_deltas = [to_numpy(c[keys.CONTROL_DELTA]) for c in contents]
        arrays, control = scaffold_update(
            self.current, self.control, new_weights, control_deltas, self.global_lr,
            max(self.num_total_nodes, len(replies)),
        )
        self.control = control
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        return to_record(arrays), metrics

    def state_dict(self) -> dict[str, dict[str, np.ndarray]]:
        """Server control variate, for checkpoints."""
        return {"control": dict(self.control or {})}

    def load_state_dict(self, state: dict[str, dict[str, np.ndarray]]) -> None:
        """Restore the server control variate from a checkpoint."""
        self.control = state.get("control") or None


def scaffold_update(
    x: dict[str, np.ndarray],
    c: dict[str, np.ndarray],
    new_weights: list[dict[str, np.ndarray]],
    control_deltas: list[dict[str, np.ndarray]],
    global_lr: float,
    num_total_nodes: int,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """SCAFFOLD server step: returns (x_new, c_new). Uniform means, as in the paper."""
    delta_y = mean_arrays([{k: y[k] - x[k] for k in x} for y in new_weights])
    delta_c = mean_arrays(control_deltas)
    fraction = len(new_weights) / num_total_nodes
    x_new = {k: (x[k] + global_lr * delta_y[k]).astype(x[k].dtype) for k in x}
    c_new = {k: (c[k] + fraction * delta_c[k]).astype(c[k].dtype) for k in c}
    return x_new, c_new
