"""One DQN agent alone on LunarLander-v3: which of n-step returns and soft target updates helps it solve within 1e5 steps.

    python -m benchmarks.dqn_variants                                  # every variant, seeds 1-3
    python -m benchmarks.dqn_variants --variants n1 n3 --seeds 1
    python -m benchmarks.dqn_variants --report-only

The agent and rollout are the ClientApp's (`fedrl_app.agents.dqn`, `fedrl_app.tasks.gym_rl.run_steps`),
configured from the app's defaults (`pyproject.toml`, as `RunConfig`) with Double DQN, as the federated
LunarLander benchmarks use, plus each variant's overrides. It is the Local baseline of those benchmarks
without the server's greedy evaluation: the agent's own episodes decide. Solved = the 100-episode moving
average of the environment's reward reaches 200. Results: benchmarks/results/dqn_variants/
(<variant>-seed<k>.json, table.md, returns.png).
"""

from __future__ import annotations

import json
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import ROOT, benchmark_parser, command_line, fmt, save_figure, write_table  # noqa: E402
from fedrl_app.agents.dqn import DQNAgent  # noqa: E402
from fedrl_app.config import RunConfig  # noqa: E402
from fedrl_app.tasks.gym_rl import SOLVED_RETURN, env_dims, moving_average_solved, run_steps  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "dqn_variants"
TASK = "lunarlander"
BASE = {"task": TASK, "agent": "double"}
VARIANTS = {
    "n1": {"dqn-n-step": 1},                                           # 1-step targets (the default until 2026-12-03)
    "n3": {"dqn-n-step": 3},                                           # 3-step returns (Rainbow's n; the default since)
    "soft": {"dqn-n-step": 1, "dqn-tau": 0.005, "dqn-target-update-every": 1},  # Polyak target, SB3/CleanRL-style τ
    "n3-soft": {"dqn-n-step": 3, "dqn-tau": 0.005, "dqn-target-update-every": 1},
}
STEPS = 100_000
CHUNK = 1_000  # env steps per call, as a client's round


def run(variant: str, seed: int) -> dict:
    """Train one agent for STEPS env steps; its episode returns, the steps at which each ended, and its speed."""
    cfg = RunConfig.from_run_config(BASE | VARIANTS[variant] | {"seed": seed})
    torch.set_num_threads(1)  # one client's share of a core, as in the federated runs
    agent = DQNAgent(*env_dims(TASK), cfg.dqn_config(), seed=seed * 1_000)
    returns, lengths = [], []
    start = time.perf_counter()
    for _ in range(0, STEPS, CHUNK):
        stats = run_steps(agent, TASK, key=("variants", variant, seed), seed=seed * 1_000, steps=CHUNK)
        returns += stats.episode_returns
        lengths += stats.episode_lengths
    ends = [int(x) for x in np.cumsum(lengths)]  # episodes run back to back from step 0: each one's last step
    wall = time.perf_counter() - start
    return {"variant": variant, "seed": seed, "overrides": VARIANTS[variant], "returns": returns,
            "end-steps": ends, "wall-s": wall, "steps-per-s": STEPS / wall}


def summarise(r: dict) -> dict:
    hit = moving_average_solved(r["returns"], SOLVED_RETURN[TASK])
    return {"solve-steps": r["end-steps"][hit] if hit is not None else None,
            "final-100": float(np.mean(r["returns"][-100:])), "steps-per-s": r["steps-per-s"]}


def report(runs: list[dict], command: str) -> str:
    lines = [f"LunarLander-v3, one Double DQN agent alone (the app's defaults + the variant), {STEPS:,} env steps; "
             f"solved = 100-episode mean of the env's reward ≥ 200. Command: `{command}`", "",
             "| variant | overrides | seeds | solved | env steps to solve (solved seeds) | final 100-episode return | env steps/s |",
             "|---|---|---|---|---|---|---|"]
    for variant in VARIANTS:
        rs = [r for r in runs if r["variant"] == variant]
        if not rs:
            continue
        s = [summarise(r) for r in rs]
        solved = [x["solve-steps"] for x in s if x["solve-steps"] is not None]
        lines.append(f"| {variant} | `{json.dumps(VARIANTS[variant])}` | {len(rs)} | {len(solved)} of {len(rs)} "
                     f"| {fmt(solved, '.0f') if solved else 'not reached'} | {fmt([x['final-100'] for x in s], '.1f')} "
                     f"| {fmt([x['steps-per-s'] for x in s], '.0f')} |")
    lines += ["", "Steps to solve: the env step at which the episode that brought the 100-episode mean to 200 ended. "
              "Env steps/s: wall clock with the other benchmark jobs on the 2 cores, not a speed measurement "
              "(`benchmarks.dqn_throughput` is)."]
    return write_table(lines, OUT)


def plot(runs: list[dict]) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, variant in enumerate(VARIANTS):
        for r in (r for r in runs if r["variant"] == variant):
            ma = np.convolve(r["returns"], np.ones(100) / 100, mode="valid") if len(r["returns"]) >= 100 else []
            ax.plot(r["end-steps"][99:], ma, color=f"C{i}", alpha=0.8, label=variant if r["seed"] == min(
                x["seed"] for x in runs if x["variant"] == variant) else None)
    ax.axhline(SOLVED_RETURN[TASK], color="k", ls=":", lw=1)
    ax.set_xlabel("env steps")
    ax.set_ylabel("100-episode mean return")
    ax.legend()
    save_figure(fig, OUT / "returns.png")


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for seed in args.seeds:
            for variant in args.variants:
                result = run(variant, seed)
                (OUT / f"{variant}-seed{seed}.json").write_text(json.dumps(result))
                print(variant, seed, summarise(result), flush=True)
    runs = [json.loads(p.read_text()) for p in sorted(OUT.glob("*-seed*.json"))]
    print(report(runs, command_line("benchmarks.dqn_variants", args.command)))
    plot(runs)


if __name__ == "__main__":
    main()
