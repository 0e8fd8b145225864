"""When RL clients solve: the episode and env step at which each client's 100-episode moving average first reaches the target."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from fedrl_app.tasks.gym_rl import SOLVED_RETURN, moving_average_solved

WINDOW = 100  # episodes in the moving average


@dataclass
class Solve:
    """One client's solve: its `episode`-th finished episode (1-based) ends at its `env_step`-th step, in `round`."""

    partition_id: int
    episode: int
    env_step: int
    round: int


@dataclass
class SolveTracker:
    """Per-partition episode returns and lengths across rounds, and the first solve of each.

    The federation counts as solved in the round its last client solves (`federation_round`).
    """

    task: str
    num_partitions: int | None = None
    returns: dict[int, list[float]] = field(default_factory=dict)
    lengths: dict[int, list[int]] = field(default_factory=dict)
    solves: dict[int, Solve] = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        return SOLVED_RETURN[self.task]

    def add(self, server_round: int, partition_id: int, returns: list[float], lengths: list[int]) -> Solve | None:
        """Record one client's episodes finished this round; return its solve if it happened now."""
        self.returns.setdefault(partition_id, []).extend(float(r) for r in returns)
        self.lengths.setdefault(partition_id, []).extend(int(n) for n in lengths)
        if partition_id in self.solves:
            return None
        hit = moving_average_solved(self.returns[partition_id], self.threshold, WINDOW)
        if hit is None:
            return None
        solve = Solve(partition_id, hit + 1, sum(self.lengths[partition_id][: hit + 1]), server_round)
        self.solves[partition_id] = solve
        return solve

    @property
    def federation_round(self) -> int | None:
        """The round by which every known client had solved (None until then)."""
        known = self.num_partitions or len(self.returns)
        if not known or len(self.solves) < known:
            return None
        return max(s.round for s in self.solves.values())

    def summary(self) -> dict:
        """JSON-able: target, per-client solves and the federation's round."""
        return {"threshold": self.threshold, "window": WINDOW, "federation-solved-round": self.federation_round,
                "clients": {str(p): asdict(s) for p, s in sorted(self.solves.items())}}
