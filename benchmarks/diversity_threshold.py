"""What Fusion's diversity filter admits at each θ, offline: fresh, repeated, foreign and poisoned LunarLander states.

    python -m benchmarks.diversity_threshold                    # 3 seeds, θ from 0.15 to 1.2, normalised and raw
    python -m benchmarks.diversity_threshold --report-only

Fusion admits a shared transition if its filter statistic is ≥ θ (`strategies/fusion.py`): with
`diversity-measure = "mean"` the mean distance from its state to 16 states sampled from the server's
buffer (normalised or raw states), with `"nearest"` its distance to the nearest buffer state over the
buffer's median nearest-neighbour spacing (normalised states). This measures,
without training (a minute of CPU), what share of each kind of state passes at each θ, so a θ can be
chosen by what it admits rather than by trial runs. The buffer: 50,000 states of the nominal
LunarLander-v3, half from a uniformly random policy (early training), half from gymnasium's heuristic
lander with 10% random actions (a policy that lands). Candidates, 2,000 of each, from episodes the
buffer has not seen:
- `fresh-random`, `fresh-lander`: the same two policies on the nominal environment (in-distribution);
- `repeat`: states already in the buffer (a client that re-sends what it sent before);
- `varied-lander`: the lander on the four other `varied` environments (gravity −8 … −3.2, wind up to 15);
- `poison-states`: uniform in [−10, 10] per dimension (the `poison-states` attack).
Results: benchmarks/results/diversity_threshold/ (seed<k>.json, table.md, admitted.png).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from gymnasium.envs.box2d.lunar_lander import heuristic  # noqa: E402

from benchmarks.common import ROOT, benchmark_parser, command_line, fmt, save_figure, write_table  # noqa: E402
from fedrl_app.tasks.env_variation import env_params, make_env, num_variants  # noqa: E402
from strategies.fusion import StateNormaliser, mean_distance, nearest_distances, nearest_spacing  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "diversity_threshold"
BUFFER_STATES = 50_000     # Fusion's server-buffer-size
CANDIDATES = 2_000         # states of each kind tested
FILTER_K = 16              # Fusion's filter-k
LANDER_EPSILON = 0.1       # random-action share of the lander policy
THETAS = {"mean, normalised": [0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.05, 1.2],
          "mean, raw": [0.15, 0.5, 0.76, 1.0, 1.3, 1.6, 2.0],
          "nearest, normalised": [0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]}
KINDS = ["fresh-random", "fresh-lander", "repeat", "varied-lander", "poison-states"]


def collect(n: int, policy: str, params: dict | None, rng: np.random.Generator) -> np.ndarray:
    """n states visited by `policy` ("random" or "lander": the heuristic, LANDER_EPSILON random) on one environment."""
    env = make_env("lunarlander", params)
    states: list[np.ndarray] = []
    obs, _ = env.reset(seed=int(rng.integers(2**31)))
    while len(states) < n:
        states.append(obs)
        random_action = policy == "random" or rng.random() < LANDER_EPSILON
        action = int(rng.integers(4)) if random_action else int(heuristic(env.unwrapped, obs))
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, _ = env.reset(seed=int(rng.integers(2**31)))
    env.close()
    return np.asarray(states, dtype=np.float32)


def measure(seed: int) -> dict:
    """Each candidate kind's filter statistic in each measure: the mean distance to FILTER_K sampled buffer states
    (normalised and raw), and the nearest-neighbour distance over the buffer's median spacing (normalised)."""
    rng = np.random.default_rng(seed)
    buffer = np.concatenate([collect(BUFFER_STATES // 2, "random", None, rng),
                             collect(BUFFER_STATES // 2, "lander", None, rng)])
    varied = [env_params("lunarlander", "varied", i) for i in range(1, num_variants("lunarlander", "varied"))]
    candidates = {
        "fresh-random": collect(CANDIDATES, "random", None, rng),
        "fresh-lander": collect(CANDIDATES, "lander", None, rng),
        "repeat": buffer[rng.integers(0, len(buffer), CANDIDATES)],
        "varied-lander": np.concatenate([collect(CANDIDATES // len(varied), "lander", p, rng) for p in varied]),
        "poison-states": rng.uniform(-10, 10, size=(CANDIDATES, buffer.shape[1])).astype(np.float32),
    }
    normalise = StateNormaliser(buffer)
    spacing = nearest_spacing(normalise(buffer), rng)
    result = {f"mean, {space}": {kind: [mean_distance(s, buffer, FILTER_K, rng, transform) for s in states]
                                 for kind, states in candidates.items()}
              for space, transform in {"normalised": normalise, "raw": None}.items()}
    result["nearest, normalised"] = {kind: list(nearest_distances(normalise(states), normalise(buffer)) / spacing)
                                     for kind, states in candidates.items()}
    result["spacing"] = spacing
    return result


def report(command: str, out: Path) -> str:
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("seed*.json"))]
    lines = [f"Command: `{command}`", "",
             f"Share of each kind of state admitted (filter statistic ≥ θ; buffer of {BUFFER_STATES:,} states); "
             f"{len(runs)} seeds, mean ± std. Median nearest-neighbour spacing of the normalised buffer: "
             + fmt([r["spacing"] for r in runs], ".4f") + ".", ""]
    for space, thetas in THETAS.items():
        lines += [f"**{space}**", "", "| θ | " + " | ".join(KINDS) + " |", "|---" * (len(KINDS) + 1) + "|"]
        for theta in thetas:
            cells = [fmt([100 * float(np.mean(np.asarray(r[space][k]) >= theta)) for r in runs], ".1f") + "%"
                     for k in KINDS]
            lines.append(f"| {theta} | " + " | ".join(cells) + " |")
        lines += ["", f"Median statistic ({space}): " + ", ".join(
            f"{k} {fmt([float(np.median(r[space][k])) for r in runs], '.2f')}" for k in KINDS), ""]
    if runs:
        fig, axes = plt.subplots(1, len(THETAS), figsize=(15, 3.6))
        for ax, space in zip(axes, THETAS):
            grid = np.linspace(0, max(THETAS[space]) * 1.25, 160)
            for kind in KINDS:
                share = [[np.mean(np.asarray(r[space][kind]) >= t) for t in grid] for r in runs]
                ax.plot(grid, 100 * np.mean(share, axis=0), label=kind)
            ax.axvline(0.15, color="grey", ls=":", lw=1)
            ax.set(title=space, xlabel="θ", ylabel="admitted (%)")
        axes[0].legend(fontsize=8)
        save_figure(fig, out / "admitted.png")
    return write_table(lines, out)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for seed in args.seeds:
            (args.out / f"seed{seed}.json").write_text(json.dumps(measure(seed)))
    print(report(command_line("benchmarks.diversity_threshold", args.command), args.out))


if __name__ == "__main__":
    main()
