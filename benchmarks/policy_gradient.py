"""Federated policy gradient on CartPole-v1: FedPG vs LAPG (lazy uploads) vs AFedPG (asynchronous), N clients, seeds.

    python -m benchmarks.policy_gradient                                   # the full sweep (2-3 hours on 2 cores)
    python -m benchmarks.policy_gradient --methods fedpg afedpg --clients 2 --seeds 1 --rounds 20
    python -m benchmarks.policy_gradient --report-only

Every run goes through `flwr run` on a private local SuperLink with N simulated SuperNodes. The
synchronous methods run `--rounds` rounds; AFedPG runs N × `--rounds` server updates, so every
method consumes the same number of client gradient estimates (N per round). The global policy's
greedy return is measured by the server after every round / update (`eval-episodes` episodes).

Results land in benchmarks/results/policy_gradient/: one JSON per run (metrics.jsonl rows and
clients.jsonl rows), table.md, and return_vs_round.png, return_vs_env_steps.png,
return_vs_sim_time.png, uploads_per_round.png. "Round" for AFedPG is updates / N. Simulated time
is the virtual clock's (`systems-profile`, seconds; an environment step counts as one sample of the
client's compute), the same clock for all three methods: a synchronous round waits for its slowest
client. Runs saved before 2026-12-02 used a log-normal speed draw instead, in units of one gradient
job of a client of median speed.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import ROOT, benchmark_parser, command_line, fmt, run_app, save_figure, write_table  # noqa: E402
from fedrl_app.tasks.gym_rl import SOLVED_RETURN  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "policy_gradient"
TASK = "cartpole"
METHODS = {
    "fedpg": {"strategy": "fedpg"},
    "lapg": {"strategy": "lapg"},                                 # ξ = 1 (the default)
    "lapg-xi3": {"strategy": "lapg", "lapg-threshold": 3.0},
    "lapg-xi10": {"strategy": "lapg", "lapg-threshold": 10.0},    # lazier: noisy PG gradients rarely pass ξ = 1
    # momentum weight η_v = (v+1)^-p. p = 0.8 (the first default) freezes the momentum direction when
    # N agents make N updates per round (η ≈ 0.01 by update 400) while the policy moves on; 0.5 is
    # the default now
    "afedpg": {"strategy": "afedpg", "afedpg-eta-exponent": 0.8},
    "afedpg-p0.5": {"strategy": "afedpg", "afedpg-eta-exponent": 0.5},
}
TARGET = SOLVED_RETURN[TASK]  # 475: "reached" = the server's greedy evaluation gets there once


def run_config(method: str, n: int, seed: int, rounds: int, episodes: int, eval_episodes: int) -> dict:
    """Overrides for one run; AFedPG gets N updates per synchronous round."""
    return {**METHODS[method], "task": TASK, "seed": seed, "pg-batch-episodes": episodes,
            "num-server-rounds": rounds * n if METHODS[method]["strategy"] == "afedpg" else rounds,
            "eval-episodes": eval_episodes,
            "fraction-evaluate": 0.0, "wandb-mode": "disabled"}


def updates_per_round(run: dict) -> int:
    """N for AFedPG (one update per gradient), 1 for the synchronous strategies."""
    return run["n"] if run.get("config", {}).get("strategy", run["method"]) == "afedpg" else 1


def curve(run: dict) -> dict[str, np.ndarray]:
    """Per evaluation (round 0 = the initial policy): round-equivalent, greedy return, env steps, sim time, uploads."""
    rows = run["metrics"]
    per_round = updates_per_round(run)
    return {
        "round": np.array([r["round"] / per_round for r in rows], float),
        "return": np.array([r.get("return", np.nan) for r in rows], float),
        "env-steps": np.array([r.get("env-steps-total", 0) for r in rows], float),
        "sim-time": np.array([r.get("sim-time", 0.0) for r in rows], float),
        "uploads": np.array([r.get("uploads", 0) for r in rows], float),
    }


def uploads_per_round(run: dict) -> np.ndarray:
    """Gradient uploads in each synchronous round; AFedPG's updates are grouped N at a time."""
    uploads = curve(run)["uploads"][1:]
    per_round = updates_per_round(run)
    usable = len(uploads) // per_round * per_round
    return uploads[:usable].reshape(-1, per_round).sum(axis=1)


def summarise(run: dict) -> dict:
    """One run's numbers for the table."""
    c = curve(run)
    hit = np.nonzero(c["return"] >= TARGET)[0]
    first = int(hit[0]) if hit.size else None
    rows = run["metrics"]
    tail = max(1, len(rows) // 10)  # the last 10% of evaluations
    return {
        "final-return": float(np.nanmean(c["return"][-tail:])),
        "best-return": float(np.nanmax(c["return"])),
        "rounds-to-target": float(c["round"][first]) if first is not None else None,
        "env-steps-to-target": float(c["env-steps"][first]) if first is not None else None,
        "sim-time-to-target": float(c["sim-time"][first]) if first is not None else None,
        "env-steps": float(c["env-steps"][-1]),
        "sim-time": float(c["sim-time"][-1]),
        "uploads": float(c["uploads"].sum()),
        "uploads-saved": float(rows[-1].get("uploads-saved-total", 0)) if rows else 0.0,
        "uplink-mb": rows[-1]["uplink-bytes-total"] / 1e6 if rows else 0.0,
        "wall-s": float(run.get("wall-s", 0.0)),
    }


def mean_curve(xs: list[np.ndarray], ys: list[np.ndarray], points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds of y(x), each seed linearly interpolated on a grid up to the shortest run's last x."""
    top = min(float(x[-1]) for x in xs)
    grid = np.linspace(0.0, top, points) if top > 0 else np.zeros(1)
    return grid, np.mean([np.interp(grid, x, y) for x, y in zip(xs, ys)], axis=0)


def load_runs(out: Path) -> dict[tuple[str, int], list[dict]]:
    runs: dict[tuple[str, int], list[dict]] = {}
    for path in sorted(out.glob("*.json")):
        run = json.loads(path.read_text())
        runs.setdefault((run["method"], run["n"]), []).append(run)
    return runs


def report(command: str, out: Path = OUT) -> str:
    """table.md and the four plots from every run JSON in `out`."""
    runs = load_runs(out)
    lines = [f"CartPole-v1, server greedy return (target {TARGET:.0f}). Mean ± std over seeds. Command: `{command}`",
             "", "| method | N | seeds | final return (last 10%) | best return | rounds to target | env steps to target "
             "| env steps per agent to target | sim time to target | env steps | sim time | uploads | uploads saved "
             "| uplink MB | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (method, n), seed_runs in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        sums = [summarise(r) for r in seed_runs]
        col = {k: [s[k] for s in sums] for k in sums[0]}
        lines.append(
            f"| {method} | {n} | {len(sums)} | {fmt(col['final-return'], '.1f')} | {fmt(col['best-return'], '.1f')} "
            f"| {fmt(col['rounds-to-target'], '.0f')} | {fmt(col['env-steps-to-target'], '.3g')} "
            f"| {fmt([x / n if x is not None else None for x in col['env-steps-to-target']], '.3g')} "
            f"| {fmt(col['sim-time-to-target'], '.1f')} | {fmt(col['env-steps'], '.3g')} | {fmt(col['sim-time'], '.1f')} "
            f"| {fmt(col['uploads'], '.0f')} | {fmt(col['uploads-saved'], '.0f')} | {fmt(col['uplink-mb'], '.2f')} "
            f"| {fmt(col['wall-s'], '.0f')} |")
    ns = sorted({n for _, n in runs})
    methods = [m for m in METHODS if any(m == k[0] for k in runs)]
    for x_key, name, label in (("round", "return_vs_round", "round (AFedPG: updates / N)"),
                               ("env-steps", "return_vs_env_steps", "env steps (all clients)"),
                               ("sim-time", "return_vs_sim_time", "simulated time (median-client jobs)")):
        fig, axes = plt.subplots(1, len(ns), figsize=(4.2 * len(ns), 3.6), squeeze=False)
        for ax, n in zip(axes[0], ns):
            for i, method in enumerate(methods):
                seed_runs = runs.get((method, n), [])
                if not seed_runs:
                    continue
                curves = [curve(r) for r in seed_runs]
                grid, mean = mean_curve([c[x_key] for c in curves], [c["return"] for c in curves])
                ax.plot(grid, mean, color=f"C{i}", label=f"{method} ({len(seed_runs)} seeds)")
            ax.axhline(TARGET, color="grey", ls="--", lw=0.8)
            ax.set(title=f"N = {n}", xlabel=label, ylabel="greedy return")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        save_figure(fig, out / f"{name}.png")
    fig, axes = plt.subplots(1, len(ns), figsize=(4.2 * len(ns), 3.6), squeeze=False)
    for ax, n in zip(axes[0], ns):
        for i, method in enumerate(methods):
            per_seed = [uploads_per_round(r) for r in runs.get((method, n), [])]
            if per_seed:
                length = min(len(u) for u in per_seed)
                ax.plot(np.arange(1, length + 1), np.mean([u[:length] for u in per_seed], axis=0), color=f"C{i}",
                        label=method)
        ax.set(title=f"N = {n}", xlabel="round", ylabel="gradient uploads", ylim=(0, n + 0.5))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, out / "uploads_per_round.png")
    table = write_table(lines, out)
    return table


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--rounds", type=int, default=100, help="synchronous rounds (AFedPG: N × this many updates)")
    parser.add_argument("--episodes", type=int, default=10, help="pg-batch-episodes per client per gradient")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--out", type=Path, default=OUT, help="results directory")
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    command = command_line("benchmarks.policy_gradient", args.command)
    if not args.report_only:
        for seed in args.seeds:
            for n in args.clients:
                for method in args.methods:
                    overrides = run_config(method, n, seed, args.rounds, args.episodes, args.eval_episodes)
                    t0 = time.time()
                    with tempfile.TemporaryDirectory() as scratch:
                        metrics, clients = run_app(overrides, n, Path(scratch), out / f"{method}-n{n}-seed{seed}.log")
                    run = {"method": method, "n": n, "seed": seed, "config": overrides, "wall-s": time.time() - t0,
                           "metrics": metrics, "clients": clients}
                    (out / f"{method}-n{n}-seed{seed}.json").write_text(json.dumps(run))
                    print(f"{method} N={n} seed {seed}: {time.time() - t0:.0f}s", flush=True)
    print(report(command, out))


if __name__ == "__main__":
    main()
