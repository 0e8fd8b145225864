"""Robustness table: aggregation rules × Byzantine attacks on MNIST (10 clients, α=0.3).

    python -m benchmarks.robustness                       # every rule × attack, 1 seed, 10 rounds
    python -m benchmarks.robustness --report-only

20% of the clients (partitions 0 and 1) attack every round: sign-flip (−Δ) or scale (10·Δ).
Results: benchmarks/results/robustness/ (<rule>-<attack>-seed<k>.jsonl, table.md).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.common import ROOT, fmt, run_app, write_jsonl, write_table
from fedrl_app.hooks import read_jsonl

OUT = ROOT / "benchmarks" / "results" / "robustness"
RULES = {"fedavg": {}, "fedmedian": {}, "fedtrimmedavg": {"trimmed-beta": 0.2}, "krum": {"krum-malicious": 2}}
ATTACKS = {"clean": {}, "sign-flip": {"byzantine-fraction": 0.2, "byzantine-attack": "sign-flip"},
           "scale": {"byzantine-fraction": 0.2, "byzantine-attack": "scale", "byzantine-scale": 10.0}}


def report(command: str) -> str:
    lines = [f"MNIST, 10 clients, 20% Byzantine. Command: `{command}`", "",
             "| rule | " + " | ".join(f"{a} final acc." for a in ATTACKS) + " | replies refused | rounds |",
             "|---|" + "---|" * (len(ATTACKS) + 2)]
    for rule in RULES:
        cells, refused, rounds = [], 0, "-"
        for attack in ATTACKS:
            runs = [read_jsonl(p) for p in sorted(OUT.glob(f"{rule}-{attack}-seed*.jsonl"))]
            cells.append(fmt([r[-1]["accuracy"] for r in runs], ".4f", "not run"))
            refused += sum(row.get("clients-dropped", 0) for r in runs for row in r)
            rounds = str(runs[0][-1]["round"]) if runs else rounds
        lines.append(f"| {rule} | " + " | ".join(cells) + f" | {refused} | {rounds} |")
    table = write_table(lines, OUT)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=list(ATTACKS))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    command = (f"python -m benchmarks.robustness --rules {' '.join(args.rules)} --attacks {' '.join(args.attacks)} "
               f"--rounds {args.rounds} --seeds {' '.join(map(str, args.seeds))}")
    if not args.report_only:
        for seed in args.seeds:
            for rule in args.rules:
                for attack in args.attacks:
                    overrides = {"strategy": rule, **RULES[rule], **ATTACKS[attack], "num-server-rounds": args.rounds,
                                 "seed": seed, "wandb-mode": "disabled"}
                    with tempfile.TemporaryDirectory() as scratch:
                        rows, _ = run_app(overrides, 10, Path(scratch), OUT / f"{rule}-{attack}-seed{seed}.log")
                    write_jsonl(OUT / f"{rule}-{attack}-seed{seed}.jsonl", rows)
                    print(f"{rule} {attack} seed {seed}: final {rows[-1]['accuracy']:.4f}", flush=True)
    print(report(command))


if __name__ == "__main__":
    main()
