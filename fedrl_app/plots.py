"""PNG plots of a run's metrics.jsonl: the server's metrics (accuracy, loss or return) and bytes per round."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


CENTRAL_METRICS = {
    "accuracy": "test accuracy (server, 10k images)",
    "loss": "test loss (server)",
    "return": "greedy-policy return (server evaluation)",
}


def plot_run(rows: list[dict], run_dir: Path) -> list[Path]:
    """Write <metric>.png for each server metric present, and bytes.png, into `run_dir`; return their paths."""
    rounds = [r["round"] for r in rows]
    paths = []
    for key, label in CENTRAL_METRICS.items():
        if not any(key in r for r in rows):
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(rounds, [r.get(key, float("nan")) for r in rows], marker="o")
        ax.set(xlabel="round", ylabel=label, title=f"{run_dir.name}: {key}")
        ax.grid(alpha=0.3)
        paths.append(run_dir / f"{key}.png")
        fig.tight_layout()
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("uplink", "downlink"):
        ax1.plot(rounds, [r[f"{key}-bytes"] / 1e6 for r in rows], marker="o", label=key)
        ax2.plot(rounds, [r[f"{key}-bytes-total"] / 1e6 for r in rows], marker="o", label=key)
    ax1.set(xlabel="round", ylabel="MB this round", title="bytes per round")
    ax2.set(xlabel="round", ylabel="MB cumulative", title="cumulative bytes")
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(alpha=0.3)
    paths.append(run_dir / "bytes.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths
