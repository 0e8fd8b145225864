"""The global network's mid-run dip and the server's TD loss around the round its replay buffer fills.

    python -m benchmarks.lunarlander_dynamics

Reads the saved federated runs in benchmarks/results/lunarlander/ and prints, per run: the worst
SERVER_WINDOW-round mean of the greedy evaluation after round 15 (and its round), the round at which the
global buffer first reaches its final size, and the median server TD loss over the 20 rounds before and
after that round and from round 15 on. The README's reading of Fusion's collapse quotes these figures.
"""

from __future__ import annotations

import json

import numpy as np

from benchmarks.lunarlander import OUT, SERVER_WINDOW

FIRST_ROUND = 15  # earlier rounds are the untrained policy, not a collapse
SPAN = 20  # rounds before/after the buffer fills


def dynamics(rows: list[dict]) -> dict:
    """Worst windowed greedy return after FIRST_ROUND, buffer-full round, TD-loss medians (None if absent)."""
    greedy = [(r["round"], r["return"]) for r in rows if r.get("return") is not None]
    rounds, returns = np.array([g[0] for g in greedy]), np.array([g[1] for g in greedy])
    windowed = np.convolve(returns, np.ones(SERVER_WINDOW) / SERVER_WINDOW, mode="valid")
    ends = rounds[SERVER_WINDOW - 1:]  # the round each window ends at
    late = ends >= FIRST_ROUND
    worst = int(np.argmin(np.where(late, windowed, np.inf)))
    sizes = [r.get("global-buffer-size", 0) for r in rows]
    full = next((r["round"] for r in rows if sizes and max(sizes) > 0 and r.get("global-buffer-size") == max(sizes)), None)
    td = {r["round"]: r["server-td-loss"] for r in rows if r.get("server-td-loss") is not None}

    def median(lo: int, hi: int) -> float | None:
        values = [v for k, v in td.items() if lo <= k <= hi]
        return float(np.median(values)) if values else None

    return {"worst-greedy": float(windowed[worst]), "worst-round": int(ends[worst]), "buffer-full": full,
            "td-before": median(full - SPAN, full - 1) if full else None,
            "td-after": median(full + 1, full + SPAN) if full else None,
            "td-late": median(FIRST_ROUND, 10**9)}


def main() -> None:
    def show(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    print("run | worst greedy 5-round mean after round 15 (round) | buffer at its final size from round | median TD loss "
          "20 rounds before / after / from round 15")
    for path in sorted(OUT.glob("*.json")):
        run = json.loads(path.read_text())
        if not run["metrics"]:
            continue  # local runs: no global network
        d = dynamics(run["metrics"])
        print(f"{path.stem} | {d['worst-greedy']:.0f} ({d['worst-round']}) | {d['buffer-full']} | "
              f"{show(d['td-before'])} / {show(d['td-after'])} / {show(d['td-late'])}")


if __name__ == "__main__":
    main()
