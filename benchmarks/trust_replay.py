"""Trust replayed offline: would a reputation that is slow to regain have held the faulty clients down?

    python -m benchmarks.trust_replay

Reads the saved per-round update-cosine similarities of the attack runs on the defaults
(benchmarks/results/rl_attacks_defaults/fusion-<attack>-n5-seed<k>.json) and replays them through a
reputation r_k that follows a similarity down at once and back up slowly:
    r_k ← sim_k if sim_k < r_k, else r_k + β·(sim_k − r_k),      w_k ∝ max(0, r_k)
(β = 1 is today's rule, w_k ∝ max(0, sim_k)). Open loop: the similarities are the recorded ones, so the
replay shows what the weights would have been in those rounds, not how the run would then have gone.
Reported: the faulty client's (partition 0) mean weight in each fifth of the rounds, and the lowest honest
client's mean weight. Results: benchmarks/results/trust_replay/table.md.
"""

from __future__ import annotations

import json

import numpy as np

from benchmarks.common import ROOT, command_line, write_table
from strategies.fusion import normalise_weights

RUNS = ROOT / "benchmarks" / "results" / "rl_attacks_defaults"
OUT = ROOT / "benchmarks" / "results" / "trust_replay"
ATTACKS = ("random-action", "reward-flip", "noise", "sign-flip-2.5", "poison-rewards", "poison-states")
BETAS = (1.0, 0.2, 0.05)  # 1: today's rule; the others regain a twentieth or a fifth of the gap a round
BLOCKS = 5                # the faulty client's weight is averaged over this many equal blocks of rounds


def reputation_weights(similarities: np.ndarray, beta: float) -> np.ndarray:
    """(rounds, clients) similarities -> (rounds, clients) weights of the slow-to-regain reputation, normalised
    as Fusion normalises similarities (a round where every reputation is ≤ 0 gets the plain mean)."""
    reputation = similarities[0].copy()
    weights = []
    for sims in similarities:
        reputation = np.where(sims < reputation, sims, reputation + beta * (sims - reputation))
        weights.append(normalise_weights(list(reputation))[0])
    return np.array(weights)


def similarities(run: dict) -> np.ndarray:
    """The run's recorded update-cosine similarities, one row per round, one column per partition."""
    rows = [m for m in run["metrics"] if "trust-similarities" in m]
    n = run["n"]
    return np.array([[dict(zip(m["trust-partitions"], m["trust-similarities"])).get(p, np.nan) for p in range(n)]
                     for m in rows])


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    lines = [f"The attack runs on the defaults (N = 5, partition 0 faulty), their recorded update-cosine similarities "
             f"replayed through a slow-to-regain reputation (β = 1: today's rule). Command: `{command_line('benchmarks.trust_replay')}`", "",
             "| attack | seed | β | faulty client's weight by fifth of the run (1/N = 0.2) | lowest honest client's "
             "mean weight |", "|---" * 5 + "|"]
    for attack in ATTACKS:
        for path in sorted(RUNS.glob(f"fusion-{attack}-n5-seed*.json")):
            run = json.loads(path.read_text())
            sims = similarities(run)
            for beta in BETAS:
                w = reputation_weights(sims, beta)
                fifths = " / ".join(f"{b[:, 0].mean():.3f}" for b in np.array_split(w, BLOCKS))
                lines.append(f"| {attack} | {run['seed']} | {beta:g} | {fifths} | {w[:, 1:].mean(axis=0).min():.3f} |")
    print(write_table(lines, OUT))


if __name__ == "__main__":
    main()
