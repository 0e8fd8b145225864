"""Privacy/utility table: MNIST FedAvg with Flower's fixed-clipping DP, accuracy against ε (10 clients, α=0.3).

    python -m benchmarks.privacy                      # no DP, then z in NOISE at C=1, server-side; one client-side run
    python -m benchmarks.privacy --report-only

User-level central DP: each client's update is clipped to C, the equal-weight mean gets noise
N(0, (zC/n)²), ε at δ=1e-5 from Flower's RDP accountant (all 10 clients every round, no sampling
amplification). Results: benchmarks/results/privacy/ (<name>-seed<k>.jsonl, table.md, privacy.png).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.common import ROOT, benchmark_parser, command_line, fmt, run_app, save_figure, write_jsonl, write_table  # noqa: E402
from fedrl_app.server.recorder import read_jsonl  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "privacy"
CLIPPING_NORM = 1.0
NOISE = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)


def settings(noise: tuple[float, ...], client_side_noise: float) -> dict[str, dict]:
    """name -> run-config overrides."""
    runs = {"no-dp": {}}
    for z in noise:
        runs[f"server-z{z:g}"] = {"dp-mode": "server", "dp-noise-multiplier": z, "dp-clipping-norm": CLIPPING_NORM}
    runs[f"client-z{client_side_noise:g}"] = {"dp-mode": "client", "dp-noise-multiplier": client_side_noise,
                                              "dp-clipping-norm": CLIPPING_NORM}
    return runs


def report(command: str, runs_config: dict[str, dict]) -> str:
    lines = [f"MNIST, 10 clients, C={CLIPPING_NORM:g}, δ=1e-5; per-round columns are mean ± std over rounds. "
             f"Command: `{command}`", "",
             "| run | noise z | noise std / coord. | final acc. | best acc. | ε after last round | "
             "median update norm per round | share clipped per round |", "|---|---|---|---|---|---|---|---|"]
    points = []
    for name, overrides in runs_config.items():
        runs = [read_jsonl(p) for p in sorted(OUT.glob(f"{name}-seed*.jsonl"))]
        if not runs:
            lines.append(f"| {name} | | | not run | | | | |")
            continue
        last = [r[-1] for r in runs]
        z = overrides.get("dp-noise-multiplier")
        stdev = "-" if z is None else f"{last[0]['dp-noise-stdev']:.2g}"
        eps = [row.get("dp-epsilon") for row in last]
        eps_cell = "∞ (no noise)" if z == 0 else ("no DP" if z is None else fmt(eps, ".3g"))
        norms = [row["dp-update-norm-median"] for r in runs for row in r[1:] if "dp-update-norm-median" in row]
        clipped = [row["dp-clipped-fraction"] for r in runs for row in r[1:] if "dp-clipped-fraction" in row]
        lines.append(
            f"| {name} | {'-' if z is None else f'{z:g}'} | "
            f"{stdev} | {fmt([row['accuracy'] for row in last], '.4f')}"
            f" | {fmt([max(x['accuracy'] for x in r) for r in runs], '.4f')} | {eps_cell} | "
            f"{fmt(norms, '.2f', '-')} | {fmt(clipped, '.0%', '-')} |")
        if z and eps[0] is not None:
            points.append((eps[0], last[0]["accuracy"], name))
    table = write_table(lines, OUT)
    if points:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for mode, marker in (("server", "o-"), ("client", "s")):
            mine = sorted(p for p in points if p[2].startswith(mode))
            if mine:
                ax.plot([p[0] for p in mine], [p[1] for p in mine], marker, label=f"{mode}-side clipping")
        for eps, acc, name in points:
            ax.annotate(name.split("-")[1], (eps, acc), fontsize=7, textcoords="offset points", xytext=(4, -10))
        ax.set(xscale="log", xlabel="ε (δ=1e-5) after the last round", ylabel="final test accuracy",
               title="MNIST FedAvg, user-level DP, 10 clients")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save_figure(fig, OUT / "privacy.png")
    return table


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--noise", type=float, nargs="+", default=list(NOISE))
    parser.add_argument("--client-side-noise", type=float, default=0.03)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    runs = settings(tuple(args.noise), args.client_side_noise)
    command = command_line("benchmarks.privacy", args.command)
    if not args.report_only:
        for seed in args.seeds:
            for name, overrides in runs.items():
                config = {**overrides, "num-server-rounds": args.rounds, "seed": seed, "wandb-mode": "disabled"}
                with tempfile.TemporaryDirectory() as scratch:
                    rows, _ = run_app(config, 10, Path(scratch), OUT / f"{name}-seed{seed}.log")
                write_jsonl(OUT / f"{name}-seed{seed}.jsonl", rows)
                print(f"{name} seed {seed}: final {rows[-1]['accuracy']:.4f}", flush=True)
    print(report(command, runs))


if __name__ == "__main__":
    main()
