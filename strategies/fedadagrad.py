"""FedAdagrad (Reddi et al., 2021): Flower's FedAdagrad with reply checking and metadata."""

import numpy as np
from flwr.serverapp.strategy import FedAdagrad as FlowerFedAdagrad

from strategies.reply_guard import ReplyGuardMixin
from strategies.round_schedule import RoundScheduleMixin


class FedAdagrad(RoundScheduleMixin, ReplyGuardMixin, FlowerFedAdagrad):
    """Adaptive server optimizer: x ← x + η·m_t / (√v_t + τ), v_t = v_{t−1} + Δ_t².

    Same parameters as :class:`flwr.serverapp.strategy.FedAdagrad`. Its optimizer
    state (m_t, v_t) is checkpointed through `state_dict` / `load_state_dict`.
    """

    def state_dict(self) -> dict[str, dict[str, np.ndarray]]:
        """Server optimizer state, and the reply guard's groups, for checkpoints."""
        return {**super().state_dict(), **{name: dict(getattr(self, name) or {}) for name in ("m_t", "v_t")}}

    def load_state_dict(self, state: dict[str, dict[str, np.ndarray]]) -> None:
        """Restore the server optimizer state (and the reply guard's groups) from a checkpoint."""
        super().load_state_dict(state)
        self.m_t = state.get("m_t") or None
        self.v_t = state.get("v_t") or None
