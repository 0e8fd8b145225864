"""PNG plots of a run: server metrics, bytes per round, and for RL per-client returns and Fusion's shared buffer."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

CENTRAL_METRICS = {
    "accuracy": "test accuracy (server, 10k images)",
    "loss": "test loss (server)",
    "return": "greedy-policy return (server evaluation)",
}


def _save(fig, path: Path, paths: list[Path]) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)


def episode_ends(client_rows: list[dict]) -> tuple[list[int], list[float]]:
    """One client's finished episodes across rounds: the env step (its own count) at which each ended, and its return.

    Within a round only episode lengths are known, not where the first one started (episodes
    continue across rounds), so ends are placed by cumulative length, capped at the round's steps.
    """
    total, ends, returns = 0, [], []
    for row in sorted(client_rows, key=lambda r: r["round"]):
        end = total
        for ret, length in zip(row["episode_returns"], row["episode_lengths"]):
            end = min(end + length, total + row["env_steps"])
            ends.append(end)
            returns.append(float(ret))
        total += row["env_steps"]
    return ends, returns


def plot_client_returns(clients: list[dict], rows: list[dict], path: Path, window: int = 20) -> bool:
    """Each client's episode returns (`window`-episode moving average) against its env steps, with the server's
    greedy evaluation placed at round × steps per round; False (nothing drawn) if no client finished an episode."""
    if not any(c.get("episode_returns") for c in clients):
        return False
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for pid in sorted({c["partition_id"] for c in clients}):
        ends, returns = episode_ends([c for c in clients if c["partition_id"] == pid])
        w = min(window, len(returns))
        if w:
            ax.plot(ends[w - 1:], np.convolve(returns, np.ones(w) / w, mode="valid"), lw=0.9, label=f"client {pid}")
    steps_per_round = max(c["env_steps"] for c in clients)
    evaluated = [r for r in rows if r.get("return") is not None]
    if evaluated:
        ax.plot([r["round"] * steps_per_round for r in evaluated], [r["return"] for r in evaluated], "k.-",
                lw=1, ms=3, label="server greedy evaluation")
    ax.set(xlabel="env steps per client", ylabel=f"return ({window}-episode moving average)",
           title=f"{path.parent.name}: returns")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path, [])
    return True


def plot_run(rows: list[dict], run_dir: Path, clients: list[dict] | None = None) -> list[Path]:
    """Write <metric>.png for each server metric present and bytes.png into `run_dir`; for RL runs also
    client-returns.png, and for Fusion fusion.png (global buffer size, filter acceptance). Returns the paths."""
    rounds = [r["round"] for r in rows]
    paths: list[Path] = []
    for key, label in CENTRAL_METRICS.items():
        if not any(key in r for r in rows):
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(rounds, [r.get(key, float("nan")) for r in rows], marker="o")
        ax.set(xlabel="round", ylabel=label, title=f"{run_dir.name}: {key}")
        ax.grid(alpha=0.3)
        _save(fig, run_dir / f"{key}.png", paths)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("uplink", "downlink"):
        ax1.plot(rounds, [r[f"{key}-bytes"] / 1e6 for r in rows], marker="o", label=key)
        ax2.plot(rounds, [r[f"{key}-bytes-total"] / 1e6 for r in rows], marker="o", label=key)
    ax1.set(xlabel="round", ylabel="MB this round", title="bytes per round")
    ax2.set(xlabel="round", ylabel="MB cumulative", title="cumulative bytes")
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(alpha=0.3)
    _save(fig, run_dir / "bytes.png", paths)
    if clients and plot_client_returns(clients, rows, run_dir / "client-returns.png"):
        paths.append(run_dir / "client-returns.png")
    fusion = [r for r in rows if "global-buffer-size" in r]
    if fusion:
        fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4))
        ax1.plot([r["round"] for r in fusion], [r["global-buffer-size"] for r in fusion], marker=".")
        ax1.set(xlabel="round", ylabel="transitions", title="server replay buffer size")
        ax2.plot([r["round"] for r in fusion], [r.get("filter-acceptance", float("nan")) for r in fusion],
                 marker=".")
        ax2.set(xlabel="round", ylabel="admitted / offered", ylim=(0, 1.05), title="shared transitions admitted")
        weights: dict[int, list[tuple[int, float]]] = {}  # partition -> (round, its trust weight)
        for r in fusion:
            for pid, w in zip(r.get("trust-partitions", []), r.get("trust-weights", [])):
                weights.setdefault(int(pid), []).append((r["round"], w))
        for pid, series in sorted(weights.items()):
            ax3.plot(*zip(*series), lw=1, label=f"partition {pid}")
        if weights:
            ax3.axhline(1 / len(weights), color="grey", ls="--", lw=0.8, label="1/N")
            ax3.legend(fontsize=7)
        ax3.set(xlabel="round", ylabel="weight", ylim=(-0.02, 1.02), title="trust weight of each client")
        for ax in (ax1, ax2, ax3):
            ax.grid(alpha=0.3)
        _save(fig, run_dir / "fusion.png", paths)
    return paths
