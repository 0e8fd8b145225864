"""MNIST baselines: FedAvg, FedProx, SCAFFOLD, FedAdagrad on 10 Dirichlet(0.3) clients, same seed/partitions.

    python -m benchmarks.mnist_baselines                 # run all, write table + plot
    python -m benchmarks.mnist_baselines --report-only   # rebuild table + plot from saved runs

Each run goes through the real Flower path (`flwr run` on a private simulation
SuperLink, see fedrl_app/launch.py). Results land in benchmarks/results/mnist_baselines/:
one <strategy>-seed<k>.jsonl per run (the run's metrics.jsonl), table.md, accuracy.png.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.common import (  # noqa: E402
    ROOT,
    benchmark_parser,
    command_line,
    first_round_reaching,
    fmt,
    run_app,
    save_figure,
    write_jsonl,
    write_table,
)
from fedrl_app.server.recorder import read_jsonl  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "mnist_baselines"
STRATEGIES = ("fedavg", "fedprox", "scaffold", "fedadagrad")
TARGET = 0.97


def summarise(rows: list[dict]) -> dict:
    hit = first_round_reaching(rows, "accuracy", TARGET)
    trained = [r for r in rows if r["round"] > 0]
    return {
        "best": max(r["accuracy"] for r in rows),
        "final": rows[-1]["accuracy"],
        "rounds-to-target": hit["round"] if hit else None,
        "uplink-mb-to-target": hit["uplink-bytes-total"] / 1e6 if hit else None,
        "uplink-mb-total": rows[-1]["uplink-bytes-total"] / 1e6,
        "wall-s": sum(r["wall-s"] for r in trained),
        "round-wall-s": statistics.median(r["wall-s"] for r in trained),
    }


def report(strategies: tuple[str, ...], command: str) -> str:
    runs = {s: [read_jsonl(p) for p in sorted(OUT.glob(f"{s}-seed*.jsonl"))] for s in strategies}
    lines = [
        f"MNIST, 10 clients, Dirichlet α=0.3, target {TARGET:.0%} server test accuracy. Command: `{command}`",
        "",
        "| strategy | seeds | rounds | best acc. | final acc. | rounds to 97% | uplink MB to 97% | wall s (run) | s / round |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s, seed_runs in runs.items():
        if not seed_runs:
            continue
        sums = [summarise(r) for r in seed_runs]
        col = {k: [x[k] for x in sums] for k in sums[0]}
        lines.append(
            f"| {s} | {len(seed_runs)} | {seed_runs[0][-1]['round']} | {fmt(col['best'], '.4f')} | {fmt(col['final'], '.4f')} "
            f"| {fmt(col['rounds-to-target'], '.1f')} | {fmt(col['uplink-mb-to-target'], '.1f')} "
            f"| {fmt(col['wall-s'], '.0f')} | {fmt(col['round-wall-s'], '.1f')} |"
        )
        rounds = [r["round"] for r in seed_runs[0]]
        mean_acc = [statistics.mean(run[i]["accuracy"] for run in seed_runs) for i in range(len(rounds))]
        ax.plot(rounds, mean_acc, marker=".", label=s)
    ax.axhline(TARGET, color="grey", ls="--", lw=0.8)
    ax.set(xlabel="round", ylabel="server test accuracy", ylim=(0.8, 1.0), title="MNIST, 10 clients, α=0.3")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, OUT / "accuracy.png")
    table = write_table(lines, OUT)
    return table


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--num-clients", type=int, default=10)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    command = command_line("benchmarks.mnist_baselines", args.command)
    if not args.report_only:
        for seed in args.seeds:
            for strategy in args.strategies:
                t0 = time.time()
                with tempfile.TemporaryDirectory() as scratch:
                    rows, _ = run_app(
                        {"strategy": strategy, "num-server-rounds": args.rounds, "seed": seed, "wandb-mode": "disabled"},
                        args.num_clients, Path(scratch), OUT / f"{strategy}-seed{seed}.log",
                    )
                write_jsonl(OUT / f"{strategy}-seed{seed}.jsonl", rows)
                print(f"{strategy} seed {seed}: best {max(r['accuracy'] for r in rows):.4f} in {time.time() - t0:.0f}s",
                      flush=True)
    print(report(tuple(args.strategies), command))


if __name__ == "__main__":
    main()
