"""Throughput of one DQN client on LunarLander: env steps per second on one CPU thread, and where the time goes.

    python -m benchmarks.dqn_throughput               # tf1 and tf4, fused vs per-tensor Adam, 3 repeats
    python -m benchmarks.dqn_throughput --report-only

The agent and rollout are the ClientApp's (`fedrl_app.agents.dqn`, `fedrl_app.tasks.gym_rl.run_steps`):
256×256 Double DQN, batch 128, after `learning-starts`. The reference point (the issue that asked for
this): a tuned single-agent DQN does about 356 env steps/s on one core with one gradient step per env
step. Measure on an idle machine: anything else on the cores lowers every number. Results:
benchmarks/results/dqn_throughput/ (runs.json, table.md).
"""

from __future__ import annotations

import json
import statistics
import time

import torch

from benchmarks.common import ROOT, benchmark_parser, command_line, write_table
from fedrl_app.agents.dqn import DQNAgent, DQNConfig
from fedrl_app.tasks.gym_rl import env_dims, run_steps

OUT = ROOT / "benchmarks" / "results" / "dqn_throughput"
TASK = "lunarlander"


def steps_per_second(train_frequency: int, fused: bool, steps: int, seed: int) -> float:
    """Env steps/s of one agent (acting, stepping, storing, training), measured after learning starts."""
    torch.set_num_threads(1)
    config = DQNConfig.for_agent("double", train_frequency=train_frequency, learning_starts=1_000)
    agent = DQNAgent(*env_dims(TASK), config, seed=seed)
    if not fused:  # the per-tensor loop the agent used before
        agent.optimizer = torch.optim.Adam(agent.q.parameters(), lr=config.learning_rate, foreach=False)
    key = ("throughput", train_frequency, fused, seed)
    run_steps(agent, TASK, key=key, seed=seed, steps=1_200)  # past learning-starts, warm caches
    start = time.perf_counter()
    run_steps(agent, TASK, key=key, seed=seed, steps=steps)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--steps", type=int, default=3_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    command = command_line("benchmarks.dqn_throughput", args.command)
    if not args.report_only:
        runs = [{"train-frequency": tf, "fused-adam": fused, "repeat": r,
                 "steps-per-s": steps_per_second(tf, fused, args.steps, seed=r)}
                for r in range(args.repeats) for tf in (1, 4) for fused in (True, False)]
        (OUT / "runs.json").write_text(json.dumps(runs, indent=1))
    runs = json.loads((OUT / "runs.json").read_text())
    lines = [f"One Double-DQN client on LunarLander-v3 (256×256, batch 128), one CPU thread. Command: `{command}`", "",
             "| gradient steps per env step | Adam | env steps/s (mean ± std over repeats) |", "|---|---|---|"]
    for tf in (1, 4):
        for fused in (True, False):
            xs = [r["steps-per-s"] for r in runs if r["train-frequency"] == tf and r["fused-adam"] == fused]
            if xs:
                spread = f" ± {statistics.stdev(xs):.0f}" if len(xs) > 1 else ""
                lines.append(f"| 1/{tf} | {'fused' if fused else 'per-tensor'} | {statistics.mean(xs):.0f}{spread} |")
    print(write_table(lines, OUT))


if __name__ == "__main__":
    main()
