"""AFedPG: asynchronous federated policy gradient with a lookahead point and normalized steps.

Lan, Han, Hashemi, Aggarwal and Brinton, "Asynchronous Federated Reinforcement Learning with
Policy Gradient Updates: Algorithm Design and Convergence Analysis", arXiv:2404.08003. Clients
run at heterogeneous (simulated) speeds; the server applies each gradient the moment it arrives
(AsyncBuffer's event loop and clock with buffer size 1), so a gradient may have been computed
δ updates ago. With k the number of updates so far and θ_k the current policy:

Dispatch (a client becomes free at version v; it gets one model, the lookahead point):

    η_v = (v + 1)^(−p)                                      p = `afedpg-eta-exponent` (η_0 = 1)
    θ̃_v = θ_v + ((1 − η_v) / η_v) · (θ_v − θ_{v−1})         (θ_{−1} := θ_0)

    and the client returns g = ĝ(θ̃_v), trajectories sampled with π_{θ̃_v}.

Arrival (that gradient arrives when the server is at version k; delay δ = k − v):

    d_k     = (1 − η) · d_{k−1} + η · g                      (d = g for the first arrival)
    θ_{k+1} = θ_k + α_k · d_k / ‖d_k‖                         α_k = α · (k + 1)^(−q)
                                                              α = `afedpg-step-size`, q = `afedpg-step-exponent`

    η = η_v                                                   if `afedpg-delay-adaptive` is false
    η = min(1, η_v / (1 − δ · η_v))   (1 if δ · η_v ≥ 1)      if it is true (default)

Why: the lookahead makes the momentum direction d an estimate of ∇J at the *current* point.
Expanding ∇J around θ_k, d_k − ∇J(θ_k) ≈ H · [(1 − η)(θ_{k−1} − θ_k) + η(θ̃_v − θ_k)], which the
lookahead cancels exactly when δ = 0 (implicit gradient transport; the paper's synchronous
case). With a delay, along a steady path θ_{j+1} − θ_j = s (normalized steps of equal length
make it near-steady) θ̃_v − θ_k = (1/η_v − 1 − δ)·s and the bracket is [η(1/η_v − δ) − 1]·s, zero
for η = 1/(1/η_v − δ) = η_v / (1 − δ η_v): a delayed gradient, whose lookahead fell short of θ_k,
gets a larger weight (and η = 1, the fresh gradient alone, when even that is not enough).
The normalized step bounds the drift a delay can cause, ‖θ_k − θ_v‖ ≤ δ·α, whatever the
gradients' scale.

How this maps onto the paper: the paper's agent receives θ_k, θ_{k−1} and d_{k−1}, computes the
lookahead and the momentum d_k itself and uploads d_k; the server only takes the normalized step.
Here the server keeps the momentum (one chain, in arrival order, so every gradient enters it)
and ships only θ̃_v; the client uploads ĝ (same size as d). With one client, or no delay, the
two are the same computation. The paper's server steps by a decaying learning rate along the
normalized direction; q > 0 gives that decay, q = 0 (the default) a constant α, which is what
the benchmarks use (a decaying step needs α tuned to the run length). The delay-adaptive weight
above is derived here from the paper's Hessian-cancellation argument, see the module's tests for
a hand-computed run.
"""

from __future__ import annotations

from logging import INFO

import numpy as np
from flwr.app import Message
from flwr.supercore import log

from fedrl_app.protocol import keys
from fedrl_app.protocol.records import to_numpy
from strategies.async_buffer import Arrival, AsyncBuffer, Job
from strategies.fedpg import FedPG
from strategies.strategy_utils import distance, squared_norm
from strategies.wrapper import StrategyState


def eta_schedule(version: int, exponent: float) -> float:
    """η_v = (v + 1)^(−p): 1 at the first version, then decaying (p = 0.5 by default; see `AFedPG`)."""
    return float((version + 1.0) ** (-exponent))


def lookahead_point(theta: dict[str, np.ndarray], theta_prev: dict[str, np.ndarray], eta: float
                    ) -> dict[str, np.ndarray]:
    """θ̃ = θ + ((1 − η)/η)·(θ − θ_prev), in θ's dtypes."""
    coef = (1.0 - eta) / eta
    return {k: (theta[k].astype(np.float64) + coef * (theta[k].astype(np.float64) - theta_prev[k].astype(np.float64))
                ).astype(theta[k].dtype) for k in theta}


def mixing_weight(eta_dispatch: float, delay: int, delay_adaptive: bool) -> float:
    """η for a gradient whose lookahead used η_v and that arrives δ updates late (see the module docstring)."""
    if not delay_adaptive or delay == 0:
        return eta_dispatch
    denominator = 1.0 / eta_dispatch - delay
    return 1.0 if denominator <= 1.0 else 1.0 / denominator


class AFedPG(AsyncBuffer):
    """Asynchronous policy gradient: lookahead dispatch, momentum direction, normalized step per arrival.

    Parameters
    ----------
    strategy : FedPG
        Builds the per-client messages (role "policy-gradient") and checks each reply's gradient.
    step_size : float (default: 0.1)
        α, the length of every normalized step ‖θ_{k+1} − θ_k‖.
    eta_exponent : float (default: 0.5)
        p in η_v = (v + 1)^(−p); 0 gives η = 1 (no momentum, no lookahead).
    delay_adaptive : bool (default: True)
        Weight a delayed gradient by η_v / (1 − δ η_v) instead of η_v.
    step_exponent : float (default: 0.0)
        q in the step length α_k = α·(k+1)^(−q) of update k (0: every step has length α).
    **kwargs
        `speed_sigma`, `seed`, `poll_interval`, `jitter`, `speeds` of :class:`AsyncBuffer`.
    """

    def __init__(self, strategy: FedPG, *, step_size: float = 0.1, eta_exponent: float = 0.5,
                 delay_adaptive: bool = True, step_exponent: float = 0.0, **kwargs) -> None:
        super().__init__(strategy, buffer_size=1, staleness_exponent=0.0, server_lr=step_size, **kwargs)
        self.step_size, self.eta_exponent, self.delay_adaptive = step_size, eta_exponent, delay_adaptive
        self.step_exponent = step_exponent
        self.direction: dict[str, np.ndarray] | None = None  # d_{k−1}, float64
        self._previous: dict[str, np.ndarray] | None = None   # θ_{k−1}

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(INFO, "\t├──> AFedPG: α_k=%s·(k+1)^-%s, η_v=(v+1)^-%s, delay-adaptive=%s, speed σ=%s", self.step_size,
            self.step_exponent, self.eta_exponent, self.delay_adaptive, self.speed_sigma)
        self.strategy.summary()

    state_prefix = "afedpg"

    def own_state_dict(self) -> StrategyState:
        """AsyncBuffer's clock and history, the momentum direction d and the previous policy θ_{k−1}."""
        state = super().own_state_dict()
        if self.direction is not None:
            state[f"{self.state_prefix}/direction"] = dict(self.direction)
        if self._previous is not None:
            state[f"{self.state_prefix}/previous"] = dict(self._previous)
        return state

    def load_own_state_dict(self, state: StrategyState) -> None:
        """Restore the clock, d and θ_{k−1}: the next lookahead and the next step continue the momentum."""
        super().load_own_state_dict(state)
        self.direction = state.get(f"{self.state_prefix}/direction")
        self._previous = state.get(f"{self.state_prefix}/previous")

    def prepare_dispatch(self, version: int, models: dict[int, dict[str, np.ndarray]]):
        """The lookahead point θ̃_v, and η_v for when the gradient comes back."""
        theta = models[version]
        eta = eta_schedule(version, self.eta_exponent)
        start = lookahead_point(theta, self._previous if self._previous is not None else theta, eta)
        return start, {"eta": eta, "lookahead-distance": distance(start, theta)}

    def contribution(self, reply: Message, job: Job, models, tau: int) -> Arrival | None:
        """The checked gradient ĝ(θ̃_v) as it came."""
        return Arrival(to_numpy(reply.content[keys.GRADIENT]), 1.0, tau, job)

    def apply_buffer(self, x: dict[str, np.ndarray], buffer: list[Arrival], round_no: int) -> dict[str, np.ndarray]:
        """d_k = (1 − η) d_{k−1} + η g;  θ_{k+1} = θ_k + α_k d_k / ‖d_k‖ (one arrival per update)."""
        (arrival,) = buffer
        g = {k: v.astype(np.float64) for k, v in arrival.update.items()}
        eta = 1.0 if self.direction is None else mixing_weight(arrival.job.info["eta"], arrival.tau,
                                                                self.delay_adaptive)
        d = g if self.direction is None else {k: (1.0 - eta) * self.direction[k] + eta * g[k] for k in g}
        norm = float(np.sqrt(squared_norm(d)))
        step = self.step_size * float(round_no) ** (-self.step_exponent)  # round_no = k + 1 for update k
        scale = step / norm if norm > 0 else 0.0
        new = {k: (x[k].astype(np.float64) + scale * d[k]).astype(x[k].dtype) for k in x}
        self._previous, self.direction = x, d
        self.strategy.rounds[round_no].extra.update({
            "eta": eta, "eta-dispatch": arrival.job.info["eta"], "delay": arrival.tau,
            "lookahead-distance": arrival.job.info["lookahead-distance"], "direction-norm": norm,
            "step-norm": step if norm > 0 else 0.0,
        })
        return new
