"""Trust replayed offline: would a slow-to-regain reputation, or a gate, have held the faulty clients down?

    python -m benchmarks.trust_replay

Reads the saved per-round update-cosine similarities of the attack runs on the defaults
(benchmarks/results/rl_attacks_defaults/fusion-<attack>-n5-seed<k>.json) and replays them through a
reputation r_k that follows a similarity down at once and back up slowly:
    r_k ← sim_k if sim_k < r_k, else r_k + β·(sim_k − r_k),      w_k ∝ max(0, r_k)
(β = 1 is the proportional rule, w_k ∝ max(0, sim_k)), and through `trust-weighting = "gate"`
(strategies.fusion.gate_weights: full weight at ≥ 0.75 × the round's median similarity, none at ≤ 0.5 ×).
Open loop: the similarities are the recorded ones, so the replay shows what the weights would have been in
those rounds, not how the run would then have gone. Reported: the faulty client's (partition 0) mean weight
in each fifth of the rounds, and the lowest honest client's mean weight; and for the `varied` runs (N = 3,
honest clients in different environments) the windy client's (partition 1) weight.
Results: benchmarks/results/trust_replay/table.md.
"""

from __future__ import annotations

import json

import numpy as np

from benchmarks.common import ROOT, command_line, write_table
from strategies.fusion import gate_weights, normalise_weights

RUNS = ROOT / "benchmarks" / "results" / "rl_attacks_defaults"
VARIED_RUNS = (ROOT / "benchmarks" / "results" / "rl_varied_episode_log",   # trust-clip median-update
               ROOT / "benchmarks" / "results" / "rl_trust_clip_median_norm")  # and median-norm
WINDY = 1  # the `varied` profile's variant 1 (wind) is partition 1
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


def gated_weights(similarities: np.ndarray) -> np.ndarray:
    """(rounds, clients) similarities -> the weights `trust-weighting = "gate"` gives them, round by round."""
    return np.array([gate_weights(list(sims))[0] for sims in similarities])


def similarities(run: dict) -> np.ndarray:
    """The run's recorded update-cosine similarities, one row per round, one column per partition."""
    rows = [m for m in run["metrics"] if "trust-similarities" in m]
    n = run["n"]
    return np.array([[dict(zip(m["trust-partitions"], m["trust-similarities"])).get(p, np.nan) for p in range(n)]
                     for m in rows])


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    lines = [f"The attack runs on the defaults (N = 5, partition 0 faulty), their recorded update-cosine similarities "
             f"replayed through a slow-to-regain reputation (β = 1: the proportional rule the runs used) and through "
             f"the gate. Command: `{command_line('benchmarks.trust_replay')}`", "",
             "| attack | seed | rule | faulty client's weight by fifth of the run (1/N = 0.2) | lowest honest client's "
             "mean weight |", "|---" * 5 + "|"]
    for attack in ATTACKS:
        for path in sorted(RUNS.glob(f"fusion-{attack}-n5-seed*.json")):
            run = json.loads(path.read_text())
            sims = similarities(run)
            rules = [(f"β = {beta:g}", reputation_weights(sims, beta)) for beta in BETAS] + [("gate", gated_weights(sims))]
            for rule, w in rules:
                fifths = " / ".join(f"{b[:, 0].mean():.3f}" for b in np.array_split(w, BLOCKS))
                lines.append(f"| {attack} | {run['seed']} | {rule} | {fifths} | {w[:, 1:].mean(axis=0).min():.3f} |")
    lines += ["", "Honest clients in different environments (`varied`, N = 3; partition 1 flies in wind): the windy "
              "client's weight (fair: 1/3) under the proportional rule the runs used and under the gate.", "",
              "| runs | seed | rule | windy client's weight by fifth of the run | rounds it weighs < 0.3 |",
              "|---" * 5 + "|"]
    for folder in VARIED_RUNS:
        for path in sorted(folder.glob("fusion-varied-n3-seed*.json")):
            run = json.loads(path.read_text())
            sims = similarities(run)
            for rule, w in (("proportional", reputation_weights(sims, 1.0)), ("gate", gated_weights(sims))):
                fifths = " / ".join(f"{b[:, WINDY].mean():.3f}" for b in np.array_split(w, BLOCKS))
                lines.append(f"| {folder.name} | {run['seed']} | {rule} | {fifths} | {int((w[:, WINDY] < 0.3).sum())} |")
    print(write_table(lines, OUT))


if __name__ == "__main__":
    main()
