"""Client side of drl-compress: the DQN controller decides what to send, the codecs encode it.

Everything that must survive between rounds lives in `context.state`: the controller
(a torch.save blob), the error-feedback residual, the last global model seen (to know
the last global update) and the round this client last sent anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

from fedrl_app.agents.sync_controller import (
    ACTIONS,
    COMPRESSED,
    FULL,
    PACE,
    REWARD_KINDS,
    SKIP,
    TIME_COSTS,
    ControllerConfig,
    Resources,
    SyncController,
    divergence,
)
from fedrl_app.protocol import keys
from fedrl_app.protocol.codecs import COMPRESSED_BYTES_PER_ENTRY, RESIDUAL_ON_DENSE, CompressionConfig, decode_update, encode_update
from fedrl_app.protocol.records import recorddict_nbytes, to_numpy, to_record
from fedrl_app.systems.profiles import ClientProfile, median_mobile_profile

CONTROLLER_KEY = "sync-controller"
RESIDUAL_KEY = "ef-residual"
LAST_GLOBAL_KEY = "last-global"
SYNC_META_KEY = "sync-meta"




@dataclass(frozen=True)
class ClientSystem:
    """What a client knows of its own system this round (its profile, and the round's sizes and deadline)."""

    profile: ClientProfile
    download_bytes: int
    train_samples: int
    deadline_s: float = 0.0
    pace_s: float = 0.0  # the round's expected length with free uploads, from the server (0: unknown)

    def reference_s(self, dense_bytes: int) -> float:
        """The time unit: a dense upload on the median mobile link."""
        return median_mobile_profile().upload_s(dense_bytes)

    def estimated_bytes(self, rate: float, dense_bytes: int) -> int:
        """Bytes of an update compressed at top-k `rate` (≈ 3 bytes per kept entry, the codec's layout)."""
        return int(COMPRESSED_BYTES_PER_ENTRY * rate * dense_bytes)

    def round_s(self, upload_bytes: int) -> float:
        """Download + compute + upload of `upload_bytes` on this client."""
        p = self.profile
        return p.download_s(self.download_bytes) + p.compute_s(self.train_samples) + p.upload_s(upload_bytes)

    def late(self, upload_bytes: int) -> bool:
        """Whether a reply of `upload_bytes` misses the deadline (the server then drops it)."""
        return self.deadline_s > 0 and self.round_s(upload_bytes) > self.deadline_s

    def added_delay_s(self, upload_bytes: int) -> float:
        """Seconds a reply of `upload_bytes` adds to the synchronous round: what this client's round runs past the
        pace (the slowest download + compute), or its whole upload if it is the slowest itself. Without a pace
        (first round, async) the server has told it nothing, and the upload's own time is the estimate."""
        if self.pace_s <= 0:
            return self.profile.upload_s(upload_bytes)
        return max(0.0, self.round_s(upload_bytes) - max(self.pace_s, self.round_s(0)))

    def time_cost_s(self, upload_bytes: int, kind: str = "upload") -> float:
        """What sending `upload_bytes` costs in seconds: its upload (`kind` "upload") or `added_delay_s`."""
        if kind not in TIME_COSTS:
            raise ValueError(f"time cost must be one of {TIME_COSTS}, got {kind!r}")
        return self.added_delay_s(upload_bytes) if kind == "added-delay" else self.profile.upload_s(upload_bytes)

    def resources(self, rate: float, dense_bytes: int, time_cost: str = "upload") -> Resources:
        """The controller's resource features at top-k `rate`, its messages' times measured as `time_cost`."""
        p = self.profile
        return Resources(
            full_cost_s=self.time_cost_s(dense_bytes, time_cost),
            compressed_cost_s=self.time_cost_s(self.estimated_bytes(rate, dense_bytes), time_cost),
            download_compute_s=p.download_s(self.download_bytes) + p.compute_s(self.train_samples),
            availability=p.availability, reference_s=self.deadline_s or self.reference_s(dense_bytes))

    def halved_until_within(self, rate: float, dense_bytes: int, low: float, budget_s: float) -> float:
        """`rate`, halved (not below `low`) until this client's round with an update at that rate ends by `budget_s`."""
        while rate > low and self.round_s(self.estimated_bytes(rate, dense_bytes)) > budget_s:
            rate = max(rate / 2.0, low)
        return rate

    def bandwidth_rule_rate(self, base_rate: float, dense_bytes: int, low: float, high: float) -> float:
        """Top-k ∝ uplink (base_rate on the median mobile link), halved until the reply would make the deadline."""
        rate = min(max(base_rate * self.profile.uplink_kbps / median_mobile_profile().uplink_kbps, low), high)
        return self.halved_until_within(rate, dense_bytes, low, self.deadline_s) if self.deadline_s > 0 else rate

    def pace_rule_rate(self, base_rate: float, dense_bytes: int, low: float, high: float) -> float | None:
        """The densest update that adds no delay to the round: None (dense) if a dense one is done by the pace (or
        the deadline), else the largest top-k rate from `high` halving down to `low` that is, else `low` (the
        slowest client, whose every byte adds). With neither a pace nor a deadline (the first round) nothing says
        what is free: the bandwidth rule's rate from `base_rate`."""
        budget_s = self.pace_s or self.deadline_s
        if budget_s <= 0:
            return self.bandwidth_rule_rate(base_rate, dense_bytes, low, high)
        budget_s = max(budget_s, self.round_s(0))  # the slowest client's own upload always adds: it sets the pace
        if self.round_s(dense_bytes) <= budget_s:
            return None
        return self.halved_until_within(high, dense_bytes, low, budget_s)


@dataclass
class SyncDecision:
    """What the controller chose this round and what it cost."""

    action: str                       # one of `DECISIONS` (the pace says whether it went dense)
    compression_rate: float
    records: dict[str, ArrayRecord]   # what goes into the reply (empty on skip)
    bytes_fraction: float             # serialized update bytes / dense model bytes
    reward: float | None              # reward of the previous decision, observed now
    state: list[float]
    previous_state: list[float] | None  # the previous decision (what `reward` rewards)
    previous_action: int | None
    divergence: float
    staleness: int


def _to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return to_record(arrays, dtype=np.float32)  # what the server decodes: float32 updates


def _from_record(record: ArrayRecord | None) -> dict[str, np.ndarray] | None:
    return None if record is None else to_numpy(record)


def decide_and_encode(
    context: Context,
    global_weights: dict[str, np.ndarray],
    local_weights: dict[str, np.ndarray],
    local_accuracy: float,
    server_round: int,
    num_rounds: int,
    bytes_penalty: float,
    prune_threshold: float,
    seed: int,
    policy: str = "dqn",
    reward_kind: str = "own-gain",
    accuracy_of: Callable[[dict[str, np.ndarray]], float] | None = None,
    controller_config: ControllerConfig | None = None,
    system: ClientSystem | None = None,
    shared_q: dict[str, np.ndarray] | None = None,
    residual_on_dense: str = "flush",
) -> SyncDecision:
    """Run one controller step and encode the update it chose to send.

    `policy` "compressed" or "full" fixes the action (baselines: compressed at the configured
    rate, or dense); "bandwidth-rule" sends compressed at a rate proportional to this client's
    uplink, lowered until the reply makes the deadline; "pace-rule" sends the densest update that adds no
    delay to the round (`ClientSystem.pace_rule_rate`). The controller still records the state and
    reward it would have learned from. With `reward_kind` "own-gain", `accuracy_of(weights)` (local
    validation accuracy of a model) measures what the message sent adds to the global model (see
    `fedrl_app.agents.sync_controller`); a reply that will miss the deadline adds nothing.
    `controller_config` sets a new controller's hyperparameters; `system` is what the client knows
    of its own link, compute and deadline (needed by "resources" features, time costs and the rules).
    `shared_q`, the server's shared controller (controller-sharing "shared"), replaces this client's
    Q-network before it acts, and the client does not learn itself: the server learns from every
    client's transitions, reported in the metadata. `residual_on_dense` is what a dense update does with the
    error-feedback residual: "flush" sends it along (error feedback's bookkeeping), "drop" discards it (the
    residual of a client that sent top-0.1% for k rounds holds nearly k rounds of updates; flushed into one dense
    reply, that is a k-fold step computed on models the federation has left behind).
    """
    if residual_on_dense not in RESIDUAL_ON_DENSE:
        raise ValueError(f"residual_on_dense must be one of {RESIDUAL_ON_DENSE}, got {residual_on_dense!r}")
    if reward_kind not in REWARD_KINDS:
        raise ValueError(f"reward_kind must be one of {REWARD_KINDS}, got {reward_kind!r}")
    if reward_kind == "own-gain" and accuracy_of is None:
        raise ValueError("reward_kind 'own-gain' needs accuracy_of")
    state = context.state
    blob = state.config_records.get(CONTROLLER_KEY)
    config = controller_config or ControllerConfig(bytes_penalty=bytes_penalty)
    controller = SyncController.from_bytes(blob["blob"]) if blob is not None else SyncController(config, seed=seed)
    if system is None and (controller.config.features == "resources" or policy in ("bandwidth-rule", "pace-rule")
                           or controller.config.time_penalty > 0 or controller.config.pace_action):
        raise ValueError("resource features, time costs, the pace action and the bandwidth and pace rules need the "
                         "client's ClientSystem")
    residual = _from_record(state.array_records.get(RESIDUAL_KEY))
    last_global = _from_record(state.array_records.get(LAST_GLOBAL_KEY))
    meta = state.config_records.get(SYNC_META_KEY, ConfigRecord({"last-sent-round": 0}))

    delta = {k: (local_weights[k] - global_weights[k]).astype(np.float32) for k in global_weights}
    global_update = None if last_global is None else {k: global_weights[k] - last_global[k] for k in global_weights}
    div = divergence(delta, global_update)
    staleness = server_round - int(meta["last-sent-round"]) - 1 if int(meta["last-sent-round"]) else server_round - 1
    dense_bytes = recorddict_nbytes(RecordDict({keys.DELTA: _to_record(delta)}))
    time_kind = controller.config.time_cost
    resources = system.resources(controller.rate, dense_bytes, time_kind) if system is not None else None
    observation = controller.encode_state(local_accuracy, div, staleness, server_round / max(num_rounds, 1), resources)

    reward = prev_state = prev_action = None
    if controller.pending is not None:  # the previous decision's transition is complete only now
        prev_state, prev_action = controller.pending[:2]
        reward = controller.pending_reward(local_accuracy)
        if policy == "dqn" and shared_q is None:
            controller.remember(prev_state, prev_action, reward, observation)
            controller.learn()
    if shared_q is not None:
        controller.q.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in shared_q.items()})

    action = {"dqn": None, "compressed": COMPRESSED, "full": FULL, "bandwidth-rule": COMPRESSED,
              "pace-rule": COMPRESSED}[policy]
    if action is None:
        action = controller.act(observation)
    c = controller.config
    dense = action == FULL  # what goes on the wire: a dense update, or (unless skipped) a compressed one
    if policy == "bandwidth-rule":
        controller.rate = system.bandwidth_rule_rate(c.initial_rate, dense_bytes, c.rate_min, c.rate_max)
    elif policy == "pace-rule" or action == PACE:  # the rule as a policy, or as the controller's chosen action
        free_rate = system.pace_rule_rate(c.initial_rate, dense_bytes, c.rate_min, c.rate_max)
        if free_rate is None:
            dense = True
        else:
            controller.rate = free_rate
        if policy == "pace-rule":
            action = FULL if dense else COMPRESSED
    rate = controller.apply_rate_action(action)
    if action == SKIP:
        # The skipped update is dropped, not banked: by the time it would be sent the global
        # model has moved on, and a residual holding many rounds of stale updates, sent at
        # once, wrecked the model (seen in async runs: 25 skips, then one send, 97% -> 28%).
        # The residual keeps only what compression left out.
        records: dict[str, ArrayRecord] = {}
    elif dense:
        flush = residual is not None and residual_on_dense == "flush"
        records = {keys.DELTA: _to_record({k: delta[k] + (residual[k] if flush else 0.0) for k in delta})}
        residual = None
    else:  # compressed, at the (possibly just changed) rate
        compressed, residual, _ = encode_update(
            delta, residual, global_weights, CompressionConfig(topk_ratio=rate, quantize=True,
                                                               prune_threshold=prune_threshold))
        records = {keys.DELTA_COMPRESSED: compressed}
    sent_bytes = recorddict_nbytes(RecordDict(records)) if records else 0
    bytes_fraction = sent_bytes / dense_bytes
    late = bool(records) and system is not None and system.late(sent_bytes)
    time_cost = (system.time_cost_s(sent_bytes, time_kind) / system.reference_s(dense_bytes)
                 if records and system else 0.0)
    own_gain = float("nan")
    if reward_kind == "own-gain":  # a reply the server will drop as late adds nothing
        own_gain = 0.0 if late else _own_gain(records, global_weights, local_accuracy, accuracy_of)
    controller.pending = (observation, action, float(local_accuracy), float(bytes_fraction), own_gain, time_cost)

    state[CONTROLLER_KEY] = ConfigRecord({"blob": controller.to_bytes()})
    if residual is None:
        if RESIDUAL_KEY in state.array_records:
            del state[RESIDUAL_KEY]
    else:
        state[RESIDUAL_KEY] = _to_record(residual)
    state[LAST_GLOBAL_KEY] = _to_record(global_weights)
    state[SYNC_META_KEY] = ConfigRecord({"last-sent-round": server_round if records else int(meta["last-sent-round"])})
    decision = ACTIONS[action] if action != PACE else "pace-full" if dense else "pace-compressed"
    return SyncDecision(decision, rate, records, bytes_fraction, reward, observation,
                        None if prev_state is None else list(prev_state), prev_action, div, max(staleness, 0))


def _own_gain(records: dict[str, ArrayRecord], global_weights: dict[str, np.ndarray], local_accuracy: float,
              accuracy_of: Callable[[dict[str, np.ndarray]], float]) -> float:
    """Local accuracy of global + the update as the server will decode it, minus that of global (0 for a skip)."""
    if not records:
        return 0.0
    if keys.DELTA in records:
        sent = _from_record(records[keys.DELTA])
    else:
        spec = {k: (v.shape, str(v.dtype)) for k, v in global_weights.items()}
        sent = decode_update(records[keys.DELTA_COMPRESSED], spec)
    return float(accuracy_of({k: global_weights[k] + sent[k] for k in global_weights})) - float(local_accuracy)
