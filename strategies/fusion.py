"""Fusion: trust-aware aggregation, shared experience behind a diversity filter, and a server that learns.

(a) Trust-aware aggregation: sim_k = cos(θ_global, θ_k), w_k = max(0, sim_k) / Σ_i max(0, sim_i),
    θ_new = α·θ_global + (1 − α)·Σ_k w_k θ_k; if every weight is zero, a plain mean (logged).
(b) Experience sharing: each client uploads a sample of its transitions (gzip-compressed);
    the server admits a transition into its global replay buffer only if the mean L2
    distance of its state to `filter_k` states sampled from the buffer is ≥ θ.
(c) Dual learning: after aggregating, the server trains θ_new on the global buffer for
    `server_updates` DQN steps with its own target network.
"""

from __future__ import annotations

from logging import INFO, WARNING

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg
from flwr.supercore import log

from fedrl_app.agents.dqn import DQNAgent, DQNConfig
from fedrl_app.protocol import keys
from fedrl_app.protocol.experience import ExperienceError, unpack_experience
from fedrl_app.protocol.metadata import ClientMetadata
from fedrl_app.protocol.payload import PayloadError
from fedrl_app.protocol.records import to_numpy, to_record
from strategies.reply_guard import ReplyGuardMixin
from strategies.round_schedule import RoundScheduleMixin
from strategies.strategy_utils import array_to_blob, blob_to_array, rng_from_array, rng_to_array


def trust_weights(global_flat: np.ndarray, client_flats: list[np.ndarray]) -> tuple[np.ndarray, bool]:
    """(weights, fell_back): w_k = max(0, cos(θ_g, θ_k)) normalised; uniform if all are zero."""
    g = global_flat.astype(np.float64)
    sims = []
    for c in client_flats:
        c = c.astype(np.float64)
        denom = np.linalg.norm(g) * np.linalg.norm(c)
        sims.append(float(g @ c / denom) if denom > 0 else 0.0)
    w = np.maximum(np.asarray(sims), 0.0)
    if w.sum() <= 0:
        return np.full(len(client_flats), 1.0 / len(client_flats)), True
    return w / w.sum(), False


def diversity_admit(state: np.ndarray, buffer_states: np.ndarray, k: int, threshold: float,
                    rng: np.random.Generator) -> bool:
    """Admit if the mean L2 distance from `state` to k states sampled from the buffer is ≥ threshold."""
    if len(buffer_states) == 0:
        return True
    idx = rng.integers(0, len(buffer_states), size=min(k, len(buffer_states)))
    return float(np.linalg.norm(buffer_states[idx] - state, axis=1).mean()) >= threshold


class Fusion(RoundScheduleMixin, ReplyGuardMixin, FlowerFedAvg):
    """Trust-aware federated DQN with a global replay buffer and a learning server.

    Parameters
    ----------
    obs_dim, n_actions : int
        The environment's observation size and number of actions.
    agent_config : DQNConfig
        The server learner's hyperparameters (the clients' agent).
    mix : float (default: 0.5)
        α, the weight kept on the current global network.
    diversity_filter : bool (default: True)
        Admit shared transitions only if diverse enough (off: admit all, the ablation).
    diversity_threshold : float (default: 0.15)
        θ, the minimum mean L2 distance to sampled buffer states.
    filter_k : int (default: 16)
        States sampled from the buffer per test.
    server_updates : int (default: 100)
        DQN steps the server takes on the global buffer each round.
    seed : int (default: 0)
    **kwargs
        Passed to :class:`flwr.serverapp.strategy.FedAvg`.
    """

    def __init__(self, *, obs_dim: int, n_actions: int, agent_config: DQNConfig, mix: float = 0.5,
                 diversity_filter: bool = True, diversity_threshold: float = 0.15, filter_k: int = 16,
                 server_updates: int = 100, seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.obs_dim, self.n_actions, self.mix = obs_dim, n_actions, mix
        self.diversity_filter, self.diversity_threshold, self.filter_k = diversity_filter, diversity_threshold, filter_k
        self.server_updates = server_updates
        self.learner = DQNAgent(obs_dim, n_actions, agent_config, seed=seed)
        self.rng = np.random.default_rng(seed)
        self.current: dict[str, np.ndarray] | None = None
        self._experience: dict[int, tuple] = {}

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(INFO, "\t├──> Fusion: α=%s, diversity filter %s (θ=%s, k=%d), server updates %d", self.mix,
            self.diversity_filter, self.diversity_threshold, self.filter_k, self.server_updates)
        super().summary()

    def state_dict(self) -> dict[str, dict[str, np.ndarray]]:
        """The server learner (target network, optimizer, the global replay buffer, its random streams) and the
        diversity filter's random stream: a resumed run continues exactly where this one stopped."""
        return {"fusion": {"learner": blob_to_array(self.learner.to_bytes()), "rng": rng_to_array(self.rng)}}

    def load_state_dict(self, state: dict[str, dict[str, np.ndarray]]) -> None:
        """Restore `state_dict`'s learner and filter stream."""
        if "fusion" in state:
            self.learner = DQNAgent.from_bytes(array_to_blob(state["fusion"]["learner"]), restore_rng=True)
            rng_from_array(self.rng, state["fusion"]["rng"])

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        """Ask clients to share experience alongside their network."""
        self.current = to_numpy(arrays)
        self._experience = {}
        config = ConfigRecord(dict(config))
        config[keys.SHARE_EXPERIENCE] = True
        return super().configure_train(server_round, arrays, config, grid)

    def check_reply_arrays(self, msg: Message, meta: ClientMetadata) -> None:
        """The network as usual, plus the experience record (refused if malformed)."""
        super().check_reply_arrays(msg, meta)
        record = msg.content.config_records.get(keys.EXPERIENCE)
        if record is None:
            raise PayloadError(f"reply has no '{keys.EXPERIENCE}' ConfigRecord")
        try:
            self._experience[msg.metadata.src_node_id] = unpack_experience(record, self.obs_dim, self.n_actions)
        except ExperienceError as err:
            raise PayloadError(f"experience: {err}") from None

    def aggregate_valid_replies(self, server_round: int, replies: list[Message]
                                ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Trust-aware mix, admit shared experience, then train on the global buffer."""
        if not replies or self.current is None:
            return None, None
        round_log = self.rounds[server_round]
        names = list(self.current)
        flat = lambda d: np.concatenate([d[k].ravel() for k in names])  # noqa: E731
        clients = [to_numpy(m.content[keys.ARRAYS]) for m in replies]
        weights, fell_back = trust_weights(flat(self.current), [flat(c) for c in clients])
        if fell_back:
            log(WARNING, "round %d: every client's cosine similarity to the global network is ≤ 0; "
                "using a plain mean", server_round)
        mixed = {k: (self.mix * self.current[k] + (1 - self.mix) * sum(w * c[k] for w, c in zip(weights, clients))
                     ).astype(self.current[k].dtype) for k in names}

        offered = admitted = 0
        for m in replies:
            obs, actions, rewards, next_obs, dones = self._experience.get(m.metadata.src_node_id, (None,) * 5)
            if obs is None:
                continue
            for i in range(len(obs)):
                offered += 1
                buffer_states = self.learner.buffer.obs[: self.learner.buffer.size]
                if not self.diversity_filter or diversity_admit(obs[i], buffer_states, self.filter_k,
                                                                self.diversity_threshold, self.rng):
                    self.learner.buffer.add(obs[i], int(actions[i]), float(rewards[i]), next_obs[i], bool(dones[i]))
                    admitted += 1

        self.learner.q.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in mixed.items()})
        losses = [self.learner.train_step() for _ in range(self.server_updates)
                  if self.learner.buffer.size >= self.learner.config.batch_size]
        new = {k: v.detach().numpy().copy() for k, v in self.learner.q.state_dict().items()}
        round_log.extra.update({
            "trust-weights": [float(w) for w in weights], "trust-fallback": int(fell_back),
            "experience-offered": offered, "experience-admitted": admitted,
            "filter-acceptance": admitted / offered if offered else 0.0,
            "global-buffer-size": self.learner.buffer.size, "server-updates": len(losses),
            "server-train-flops": self.learner.train_flops,
        })
        if losses:
            round_log.extra["server-td-loss"] = float(np.mean(losses))
        metrics = self.train_metrics_aggr_fn([m.content for m in replies], self.weighted_by_key)
        return to_record(new), metrics
