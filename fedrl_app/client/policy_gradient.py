"""Role "policy-gradient" (fedpg, lapg, afedpg): send a gradient estimate, not parameters.

Each round the client receives policy parameters θ (for AFedPG, the lookahead point the server
chose), samples `pg-batch-episodes` episodes with π_θ, and replies with the estimate ĝ(θ) as the
ArrayRecord "gradient" plus metadata (episode returns and lengths, trajectories, env steps, ‖ĝ‖).

LAPG (Chen et al., "Communication-Efficient Policy Gradient Methods for Distributed
Reinforcement Learning", IEEE TCNS 2022) makes the upload lazy. The client keeps the last
gradient it uploaded, ĝ_m(θ̂_m), in `context.state` and, at iteration k, *skips* the upload when

    ‖ĝ_m(θ^k) − ĝ_m(θ̂_m)‖² ≤ (ξ / D) · (1 / η²) · Σ_{d=1}^{D} ‖θ^{k+1−d} − θ^{k−d}‖²        (lazy condition)

with ξ = `lapg-threshold`, D = `lapg-memory`, η = `pg-lr` the server's step. This is the paper's
worker-side rule ‖δ∇_m‖² ≤ 1/(α²M²) Σ_d ξ_d ‖θ^{k+1−d} − θ^{k−d}‖² with ξ_d = ξ/D for every d,
rewritten for our server step θ ← θ + η·(1/M)·Σ_m ĝ_m: the paper's step on the *sum* of the M
gradients is α = η/M, so 1/(α²M²) = 1/η². Because ‖θ^{j+1} − θ^j‖ = η‖ḡ^j‖, the right-hand side
is (ξ/D)·Σ_d ‖ḡ^{k−d}‖²: a client skips when its gradient moved less than ξ times the recent
aggregate gradients' mean squared norm. The server sends the last D squared step norms
(`lapg-recent-steps`, newest first; fewer at the start, none in the first round, so everyone
uploads first). A skip reply carries metadata and metrics only; the server reuses the last
gradient it accepted from that client.
"""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict

from fedrl_app.agents.policy_gradient import PolicyNetwork, estimate_gradient, flat_norm
from fedrl_app.client.common import attach_metadata, partition
from fedrl_app.config import RunConfig
from fedrl_app.protocol import keys
from fedrl_app.protocol.metadata import ClientMetadata
from fedrl_app.protocol.records import recorddict_nbytes, to_numpy, to_record
from fedrl_app.tasks.gym_rl import env_dims, evaluate_policy

LAST_UPLOAD_KEY = "lapg-last-gradient"


def lazy_bound(recent_step_sq_norms: list[float], lr: float, threshold: float, memory: int) -> float:
    """(ξ/D)·(1/η²)·Σ_{d=1}^{D} ‖θ^{k+1−d} − θ^{k−d}‖², over the newest min(D, available) steps."""
    return threshold / memory / lr**2 * float(sum(recent_step_sq_norms[:memory]))


def lazy_skip(new: dict[str, np.ndarray], last: dict[str, np.ndarray] | None, bound: float) -> tuple[bool, float | None]:
    """(skip?, ‖new − last‖²): skip iff there is a last upload and the squared change is ≤ `bound`."""
    if last is None:
        return False, None
    change = sum(float(np.sum(np.square(new[k].astype(np.float64) - last[k].astype(np.float64)))) for k in new)
    return change <= bound, change


def train(msg: Message, context: Context, cfg: RunConfig) -> Message:
    """Estimate ∇J at the received parameters; upload it (or, with LAPG, maybe not)."""
    pid = partition(context)[0]
    config = msg.content[keys.CONFIG]
    server_round = int(config[keys.SERVER_ROUND])
    policy = PolicyNetwork(*env_dims(cfg.task), cfg.pg_hidden)
    policy.load_state_dict(msg.content[keys.ARRAYS].to_torch_state_dict())
    start = time.perf_counter()
    estimate = estimate_gradient(policy, cfg.task, cfg.pg_batch_episodes, cfg.pg_gamma,
                                 seed=cfg.seed * 1_000_003 + pid * 10_007 + server_round)
    elapsed = time.perf_counter() - start

    upload, change, bound = True, None, None
    if config.get(keys.LAZY, False):
        stored = context.state.array_records.get(LAST_UPLOAD_KEY)
        last = to_numpy(stored) if stored is not None else None
        bound = lazy_bound([float(x) for x in config.get(keys.LAPG_RECENT_STEPS, [])], float(config[keys.LR]),
                           float(config[keys.LAPG_THRESHOLD]), int(config[keys.LAPG_MEMORY]))
        skip, change = lazy_skip(estimate.gradient, last, bound)
        upload = not skip
    record = to_record(estimate.gradient)
    if upload and config.get(keys.LAZY, False):
        context.state[LAST_UPLOAD_KEY] = record

    content = RecordDict({keys.METRICS: MetricRecord({
        keys.NUM_EXAMPLES: estimate.env_steps, "episodes": estimate.trajectories,
        "return": float(np.mean(estimate.returns)),
    })})
    if upload:
        content[keys.GRADIENT] = record
    meta = ClientMetadata(
        partition_id=pid, num_examples=estimate.env_steps, train_time_s=elapsed,
        bytes_sent=recorddict_nbytes(content), episode_returns=estimate.returns, episode_lengths=estimate.lengths,
        env_steps=estimate.env_steps, trajectories=estimate.trajectories, gradient_norm=flat_norm(estimate.gradient),
        gradient_uploaded=upload, gradient_change=change, lazy_bound=bound,
    )
    attach_metadata(content, meta)
    return Message(content=content, reply_to=msg)


def evaluate(msg: Message, context: Context, cfg: RunConfig) -> Message:
    """Greedy episodes (argmax of the logits) of the received policy on this client's environment."""
    pid = partition(context)[0]
    net = PolicyNetwork(*env_dims(cfg.task), cfg.pg_hidden)
    net.load_state_dict(msg.content[keys.ARRAYS].to_torch_state_dict())
    returns = evaluate_policy(net, cfg.task, cfg.eval_episodes, seed=20_000 + 100 * pid)
    metrics = MetricRecord({keys.NUM_EXAMPLES: len(returns), "return": sum(returns) / len(returns)})
    return Message(content=RecordDict({keys.METRICS: metrics}), reply_to=msg)
