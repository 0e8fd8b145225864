"""Clustering where there is structure: client groups with conflicting optima (rotated or relabelled MNIST).

    python -m benchmarks.data_shift --shifts rotate permute-labels --seeds 1 2 3
    python -m benchmarks.data_shift --report-only

10 clients, Dirichlet α = 0.3, and `data-shift`: group = partition id mod 4 turns its images by
group × 90° (`rotate`, rotated MNIST as in IFCA, Ghosh et al. 2020) or relabels its digits
(`permute-labels`). FedAvg trains one global model; `clustered` re-clusters clients by their update
directions every 5 rounds (k ≤ 4 by silhouette) and trains one model per cluster. Every client
evaluates the model it receives on its own held-out split (fraction-evaluate = 1). The table reports
that own-data accuracy and the adjusted Rand index of the final clusters against the true groups;
own-data.png plots the own-data accuracy per round. Results: benchmarks/results/data_shift/.
"""

from __future__ import annotations

import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402

from benchmarks.common import ROOT, benchmark_parser, command_line, fmt, run_and_save, save_figure, write_table  # noqa: E402
from fedrl_app.server.recorder import read_jsonl  # noqa: E402
from fedrl_app.tasks.mnist import shift_group  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "data_shift"
NUM_CLIENTS = 10
SHIFTS = ("rotate", "permute-labels")
METHODS: dict[str, dict] = {
    "fedavg": {"strategy": "fedavg"},
    "clustered": {"strategy": "fedavg", "clustering": True},
}


def cluster_ari(rows: list[dict], clients: list[dict]) -> float | None:
    """Adjusted Rand index of the last round's clusters against the true shift groups (None if not clustered)."""
    assignment = next((r["cluster-of-node"] for r in reversed(rows) if r.get("cluster-of-node")), None)
    if assignment is None:
        return None
    partition_of = {str(c["node-id"]): c["partition_id"] for c in clients}
    nodes = sorted(n for n in assignment if n in partition_of)
    return float(adjusted_rand_score([shift_group(partition_of[n]) for n in nodes], [assignment[n] for n in nodes]))


def summarise(rows: list[dict], clients: list[dict]) -> dict:
    """Own-data accuracy (every client on the model it receives), server accuracy, ARI and cluster count."""
    last = rows[-1]
    return {"own": last.get("client-eval-accuracy"), "server": last["accuracy"], "ari": cluster_ari(rows, clients),
            "clusters": last.get("clusters")}


def run_paths(shift: str, method: str) -> list:
    return sorted(p for p in OUT.glob(f"{shift}-{method}-seed*.jsonl") if not p.name.endswith(".clients.jsonl"))


def plot() -> None:
    """Own-data accuracy per round: every seed's line, one colour per method, one panel per shift."""
    shifts = [s for s in SHIFTS if any(run_paths(s, m) for m in METHODS)]
    if not shifts:
        return
    fig, axes = plt.subplots(1, len(shifts), figsize=(6 * len(shifts), 4), squeeze=False)
    for ax, shift in zip(axes[0], shifts):
        for i, method in enumerate(METHODS):
            for j, path in enumerate(run_paths(shift, method)):
                rows = [r for r in read_jsonl(path) if r.get("client-eval-accuracy") is not None]
                ax.plot([r["round"] for r in rows], [r["client-eval-accuracy"] for r in rows], color=f"C{i}",
                        alpha=0.8, label=method if j == 0 else None)
        ax.set_title(f"data-shift = {shift}")
        ax.set_xlabel("round")
        ax.set_ylabel("clients' own-data accuracy")
        ax.set_ylim(bottom=max(0.0, float(np.floor(ax.get_ylim()[0] * 10) / 10)))
        ax.legend()
    save_figure(fig, OUT / "own-data.png")


def report(command: str) -> str:
    lines = [f"MNIST, {NUM_CLIENTS} clients, Dirichlet α = 0.3, 4 shift groups (partition id mod 4). Command: "
             f"`{command}`", "",
             "| shift | method | seeds | clients' own-data accuracy | server test accuracy (unshifted) | clusters | "
             "ARI vs true groups |", "|---|---|---|---|---|---|---|"]
    for shift in SHIFTS:
        for method in METHODS:
            paths = run_paths(shift, method)
            if not paths:
                continue
            sums = [summarise(read_jsonl(p), read_jsonl(p.with_suffix(".clients.jsonl"))) for p in paths]
            col = {k: [s[k] for s in sums] for k in sums[0]}
            lines.append(f"| {shift} | {method} | {len(sums)} | {fmt(col['own'], '.4f')} | {fmt(col['server'], '.4f')} "
                         f"| {fmt(col['clusters'], '.1f', '1')} | {fmt(col['ari'], '.2f', 'n/a')} |")
    return write_table(lines, OUT)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--shifts", nargs="+", default=list(SHIFTS), choices=list(SHIFTS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    command = command_line("benchmarks.data_shift", args.command)
    if not args.report_only:
        for seed in args.seeds:
            for shift in args.shifts:
                for method in args.methods:
                    overrides = {**METHODS[method], "data-shift": shift, "num-server-rounds": args.rounds, "seed": seed,
                                 "fraction-evaluate": 1.0, "wandb-mode": "disabled"}
                    name = f"{shift}-{method}-seed{seed}"
                    t0 = time.time()
                    rows, clients = run_and_save(overrides, NUM_CLIENTS, OUT, name)
                    s = summarise(rows, clients)
                    print(f"{name}: own-data {s['own']}, ARI {s['ari']}, {time.time() - t0:.0f}s", flush=True)
    print(report(command))
    plot()


if __name__ == "__main__":
    main()
