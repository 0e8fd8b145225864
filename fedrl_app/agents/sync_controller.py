"""DQN sync controller: each round a client picks full sync, compressed sync, skip, a new compression rate, or the pace.

CleanRL-style: the whole agent is here, every hyperparameter is a field of
`ControllerConfig`. One controller lives on each client, persisted between rounds in
`context.state` as a `torch.save` blob (client-local and never sent, so never untrusted).

State (features "basic": 5 numbers, all roughly in [0, 1]):
    local validation accuracy of the received global model,
    gradient divergence: 1 − cos(local update, last global update), halved to [0, 1],
    staleness: rounds since this client last sent anything, / `staleness_scale`, clipped to 1,
    progress: round / total rounds,
    current top-k ratio, log-scaled between `rate_min` (0) and `rate_max` (1).
Features "resources" add what the client knows of its own system (`Resources`), each x mapped to
x / (1 + x) so it stays in [0, 1): the time a full and a compressed update would cost it and its
download + compute time, each relative to the round deadline (or, without one, to a dense upload
on the median mobile link), and its availability.
What a message's time costs (`time_cost`):
    "upload": its upload seconds.
    "added-delay": the seconds it adds to the synchronous round: its download + compute + upload
        beyond the round's pace (the slowest download + compute of the last round, which the server
        broadcasts), or its whole upload if this client is itself the slowest. A fast client's dense
        update then costs nothing while the round waits for a slower one anyway.
Actions: full, compressed (at the current top-k rate), skip, raise or lower compression (halve or double the
rate, then send compressed), and, with `pace_action`, "pace": the pace rule's update, the densest one that adds no
delay to the synchronous round (dense if this client's round ends by the pace, else the largest top-k rate that does;
`fedrl_app.client.sync.ClientSystem.pace_rule_rate`). A controller that starts from the pace (its prior, below) does
what the rule does until it has learned that something else pays more, per client and per state.
Reward, minus bytes_penalty · bytes sent / full-model bytes and minus time_penalty · the message's
time cost / a dense upload's seconds on the median mobile link, with the accuracy gain measured
one of two ways (`reward_kind`):
    "global-gain": local accuracy of the next global model − of this one, observed one round later.
        Most of it is the other clients' work, whatever this client did: a credit-assignment
        problem that left the controllers learning only the byte cost (skip, or send less).
    "own-gain" (default): local accuracy of (this global model + what this client actually sent,
        decoded as the server will) − of this global model, measured the same round. It is
        the value of this client's own message, so each action's reward is its own doing
        (a difference reward); a skip gains nothing and costs nothing.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

FULL, COMPRESSED, SKIP, RAISE_COMPRESSION, LOWER_COMPRESSION, PACE = range(6)
ACTIONS = ("full", "compressed", "skip", "raise-compression", "lower-compression", "pace")
BASE_ACTIONS = 5  # without `pace_action`, the first five
# What a reply says it did: its action, the pace's split by what it sent (the server decodes by it, the tables count it)
DECISIONS = (*ACTIONS[:PACE], "pace-full", "pace-compressed")
DENSE_DECISIONS = ("full", "pace-full")  # the decisions whose reply is a dense update
ACTION_SETS = ("rate-steps", "with-pace")  # the config's names for pace_action False / True
START_ACTIONS = {"compressed": COMPRESSED, "full": FULL, "pace": PACE}
REWARD_KINDS = ("own-gain", "global-gain")
FEATURE_SETS = ("basic", "resources")
TIME_COSTS = ("upload", "added-delay")
BASIC_DIM, RESOURCE_DIM = 5, 4
STATE_DIM = BASIC_DIM  # of the "basic" features


@dataclass(frozen=True)
class Resources:
    """What a client knows of its own system this round, in seconds (and its availability)."""

    full_cost_s: float          # the time a dense update costs (its upload, or the delay it adds: `time_cost`)
    compressed_cost_s: float    # the same for an update at its current top-k rate (≈ 3 bytes per kept entry)
    download_compute_s: float   # receiving the model and training on it
    availability: float
    reference_s: float          # the deadline, or a dense upload on the median mobile link without one

    def features(self) -> list[float]:
        """The four resource features, each x / (1 + x) of a time relative to `reference_s`."""
        squash = lambda seconds: (seconds / self.reference_s) / (1.0 + seconds / self.reference_s)  # noqa: E731
        return [squash(self.full_cost_s), squash(self.compressed_cost_s), squash(self.download_compute_s),
                float(self.availability)]


@dataclass(frozen=True)
class ControllerConfig:
    """Every hyperparameter of the controller, named once."""

    bytes_penalty: float = 0.1        # λ: reward cost of sending a full model's worth of bytes
    gamma: float = 0.9                # discount
    hidden: int = 32                  # width of the two hidden layers
    learning_rate: float = 1e-3       # Adam
    batch_size: int = 16
    buffer_size: int = 512            # replay capacity (transitions)
    updates_per_round: int = 8        # gradient steps after each new transition
    target_update_every: int = 16     # gradient steps between hard target-network copies
    epsilon_start: float = 0.3
    epsilon_end: float = 0.02
    epsilon_decay_rounds: int = 10    # linear decay over this many decisions
    # Exploration draws actions with these weights (full, compressed, skip, raise, lower). None: a random
    # full sync costs a whole model's bytes, so with a byte cost it is explored rarely (0.02); without one
    # (a time objective) as often as skip or a rate change, or the controller never finds out what dense buys.
    explore_weights: tuple[float, ...] | None = None
    initial_rate: float = 0.01        # top-k ratio before any change
    rate_min: float = 0.001
    rate_max: float = 0.25
    rate_factor: float = 2.0          # raise compression: ratio / factor; lower: ratio * factor
    staleness_scale: float = 10.0
    # Prior Q of the starting action above the others: until the controller has learned otherwise
    # it keeps doing that, rather than taking the argmax of a random network (which wandered the
    # rate up and down and spent bytes early on). (The name predates `start_action`.)
    compressed_prior: float = 0.05
    # What the controller does before it has learned otherwise: "compressed" (keep sending at its
    # rate), "full" or, with `pace_action`, "pace". None: the pace if it is an action, else compressed
    # with a byte cost; without one (a time objective) full, the update that teaches most, which only a message's time can make costly (a compressed start
    # cost the time-objective controller 4 rounds to 97% on `uniform`, seed 1).
    start_action: str | None = None
    features: str = "basic"           # "basic" or "resources" (see the module docstring)
    time_penalty: float = 0.0         # μ: reward cost of a dense upload's time on the median mobile link
    time_cost: str = "upload"         # what a message's time is: "upload" or "added-delay" (module docstring)
    pace_action: bool = False         # add the action "pace", the pace rule's update (module docstring)

    @property
    def num_actions(self) -> int:
        """How many actions this controller chooses from (the first `num_actions` of `ACTIONS`)."""
        return BASE_ACTIONS + int(self.pace_action)

    @property
    def exploration_weights(self) -> tuple[float, ...]:
        """`explore_weights`, or the default for this byte cost (see the field's comment)."""
        if self.explore_weights is not None:
            if len(self.explore_weights) != self.num_actions:
                raise ValueError(f"explore_weights needs {self.num_actions} weights, got {len(self.explore_weights)}")
            return tuple(self.explore_weights)
        return (0.02 if self.bytes_penalty > 0 else 0.2, 0.38, 0.2, 0.2, 0.2) + ((0.2,) if self.pace_action else ())

    @property
    def starting_action(self) -> int:
        """`start_action`, or the default (the pace if it is an action, else see the field's comment), as an index."""
        start = self.start_action or ("pace" if self.pace_action else "compressed" if self.bytes_penalty > 0 else "full")
        allowed = [a for a, i in START_ACTIONS.items() if i < self.num_actions]
        if start not in allowed:
            raise ValueError(f"start_action must be one of {allowed}, got {start!r}")
        return START_ACTIONS[start]

    @property
    def state_dim(self) -> int:
        """Length of the state vector for `features`."""
        return BASIC_DIM + (RESOURCE_DIM if self.features == "resources" else 0)


class QNetwork(nn.Module):
    """MLP: state -> one Q-value per action."""

    def __init__(self, hidden: int, state_dim: int = STATE_DIM, num_actions: int = BASE_ACTIONS) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(state_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_actions)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SyncController:
    """ε-greedy DQN with experience replay and a hard-updated target network."""

    def __init__(self, config: ControllerConfig = ControllerConfig(), seed: int = 0) -> None:
        self.config = config
        torch.manual_seed(seed)
        self.q = QNetwork(config.hidden, config.state_dim, config.num_actions)
        with torch.no_grad():  # prior: Q starts at the byte cost of full sync, the start `compressed_prior` above all
            out = self.q.net[-1]
            out.weight.mul_(0.1)
            prior = [-config.bytes_penalty] + [0.0] * (config.num_actions - 1)
            prior[config.starting_action] = max(prior) + config.compressed_prior
            out.bias.copy_(torch.tensor(prior))
        self.target = QNetwork(config.hidden, config.state_dim, config.num_actions)
        self.target.load_state_dict(self.q.state_dict())
        self.optimizer = torch.optim.Adam(self.q.parameters(), lr=config.learning_rate)
        self.rng = random.Random(seed)
        self.buffer: list[tuple[list[float], int, float, list[float]]] = []
        self.buffer_pos = 0
        self.decisions = 0
        self.gradient_steps = 0
        self.rate = config.initial_rate
        # the decision awaiting its next state: (state, action, accuracy then, bytes fraction sent,
        # own gain: the accuracy its message added, measured at once (NaN with the "global-gain" reward),
        # time cost: its upload seconds relative to a dense upload on the median mobile link)
        self.pending: tuple[list[float], int, float, float, float, float] | None = None

    # --- acting -------------------------------------------------------------------------
    @property
    def epsilon(self) -> float:
        c = self.config
        frac = min(self.decisions / max(c.epsilon_decay_rounds, 1), 1.0)
        return c.epsilon_start + frac * (c.epsilon_end - c.epsilon_start)

    def act(self, state: list[float], greedy: bool = False) -> int:
        """Pick an action for `state` (ε-greedy unless `greedy`)."""
        explore = not greedy and self.rng.random() < self.epsilon
        self.decisions += 0 if greedy else 1
        if explore:
            return self.rng.choices(range(self.config.num_actions), weights=self.config.exploration_weights)[0]
        with torch.no_grad():
            return int(self.q(torch.tensor([state], dtype=torch.float32)).argmax(1).item())

    def apply_rate_action(self, action: int) -> float:
        """Raise/lower compression change the top-k ratio (within bounds); returns the ratio to use."""
        c = self.config
        if action == RAISE_COMPRESSION:
            self.rate = max(self.rate / c.rate_factor, c.rate_min)
        elif action == LOWER_COMPRESSION:
            self.rate = min(self.rate * c.rate_factor, c.rate_max)
        return self.rate

    def encode_state(self, accuracy: float, divergence: float, staleness: int, progress: float,
                     resources: Resources | None = None) -> list[float]:
        """The state, each number scaled to about [0, 1] (`resources` is required by features "resources")."""
        c = self.config
        rate_pos = math.log(self.rate / c.rate_min) / math.log(c.rate_max / c.rate_min)
        state = [float(accuracy), float(divergence), min(staleness / c.staleness_scale, 1.0), float(progress), rate_pos]
        if c.features == "resources":
            if resources is None:
                raise ValueError("features 'resources' need the client's Resources")
            state += resources.features()
        return state

    def reward(self, accuracy_before: float, accuracy_after: float, bytes_fraction: float,
               time_cost: float = 0.0) -> float:
        """Accuracy gain minus λ · bytes sent / full-model bytes minus μ · the upload's relative time."""
        return ((accuracy_after - accuracy_before) - self.config.bytes_penalty * bytes_fraction
                - self.config.time_penalty * time_cost)

    def pending_reward(self, accuracy_now: float) -> float:
        """The reward of the pending decision: its own gain if measured, else the global model's gain since."""
        _, _, accuracy_then, bytes_fraction, own_gain, time_cost = self.pending
        if math.isnan(own_gain):
            return self.reward(accuracy_then, accuracy_now, bytes_fraction, time_cost)
        return self.reward(0.0, own_gain, bytes_fraction, time_cost)

    # --- learning -------------------------------------------------------------------------
    def remember(self, state: list[float], action: int, reward: float, next_state: list[float]) -> None:
        """Store a transition (ring buffer)."""
        item = (list(state), int(action), float(reward), list(next_state))
        if len(self.buffer) < self.config.buffer_size:
            self.buffer.append(item)
        else:
            self.buffer[self.buffer_pos] = item
        self.buffer_pos = (self.buffer_pos + 1) % self.config.buffer_size

    def learn(self) -> float | None:
        """`updates_per_round` DQN steps on replayed minibatches; returns the last TD loss."""
        c = self.config
        if not self.buffer:
            return None
        loss_value = None
        for _ in range(c.updates_per_round):
            batch = [self.buffer[self.rng.randrange(len(self.buffer))] for _ in range(c.batch_size)]
            s = torch.tensor([b[0] for b in batch], dtype=torch.float32)
            a = torch.tensor([b[1] for b in batch])
            r = torch.tensor([b[2] for b in batch], dtype=torch.float32)
            s2 = torch.tensor([b[3] for b in batch], dtype=torch.float32)
            with torch.no_grad():  # the episode never ends: federated training is a continuing task
                td_target = r + c.gamma * self.target(s2).max(1).values
            q_sa = self.q(s).gather(1, a[:, None]).squeeze(1)
            loss = nn.functional.smooth_l1_loss(q_sa, td_target)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.gradient_steps += 1
            if self.gradient_steps % c.target_update_every == 0:
                self.target.load_state_dict(self.q.state_dict())
            loss_value = float(loss.item())
        return loss_value

    # --- persistence (context.state) --------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Everything needed to continue next round, as a torch.save blob."""
        state = {
            "config": asdict(self.config),
            "q": self.q.state_dict(),
            "target": self.target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "buffer": [[*b[0], b[1], b[2], *b[3]] for b in self.buffer],
            "buffer_pos": self.buffer_pos,
            "decisions": self.decisions,
            "gradient_steps": self.gradient_steps,
            "rate": self.rate,
            "pending": list(self.pending) if self.pending else None,
            "rng": list(self.rng.getstate()[1]),
        }
        out = io.BytesIO()
        torch.save(state, out)
        return out.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> SyncController:
        """Inverse of `to_bytes` (weights-only loading: tensors and plain containers)."""
        state = torch.load(io.BytesIO(blob), weights_only=True)
        ctrl = cls(ControllerConfig(**state["config"]))
        ctrl.q.load_state_dict(state["q"])
        ctrl.target.load_state_dict(state["target"])
        ctrl.optimizer.load_state_dict(state["optimizer"])
        n = ctrl.config.state_dim
        ctrl.buffer = [(row[:n], int(row[n]), float(row[n + 1]), row[n + 2:]) for row in state["buffer"]]
        ctrl.buffer_pos, ctrl.decisions = state["buffer_pos"], state["decisions"]
        ctrl.gradient_steps, ctrl.rate = state["gradient_steps"], state["rate"]
        p = state["pending"]
        ctrl.pending = (list(p[0]), int(p[1]), float(p[2]), float(p[3]), float(p[4]), float(p[5])) if p else None
        ctrl.rng.setstate((3, tuple(state["rng"]), None))
        return ctrl


def divergence(local_update: dict[str, np.ndarray], global_update: dict[str, np.ndarray] | None) -> float:
    """(1 − cos(local, global)) / 2 in [0, 1]; 0.5 (orthogonal) when there is no global update yet."""
    if global_update is None:
        return 0.5
    a = np.concatenate([v.ravel() for v in local_update.values()]).astype(np.float64)
    b = np.concatenate([global_update[k].ravel() for k in local_update]).astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 0.5
    return float((1.0 - a @ b / (na * nb)) / 2.0)
