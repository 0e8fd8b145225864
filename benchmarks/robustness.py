"""Robustness table: aggregation rules × Byzantine attacks on MNIST (10 clients, α=0.3).

    python -m benchmarks.robustness                       # every rule × attack, 1 seed, 10 rounds
    python -m benchmarks.robustness --report-only

20% of the clients (partitions 0 and 1) attack every round: sign-flip (−Δ), scale (10·Δ),
sparse-scale (10·Δ sent through drl-compress's compressed update) or weight-inflation (an honest
update claiming 10¹² examples), well formed, which the aggregation rule or the server's weight
cap must absorb; or malformed replies (a NaN in the model, an array of the wrong shape, metadata
that names os.system, a 2 KB metadata pickle that renders to 12¹² numbers), which the server must
refuse whatever the rule: those run with FedAvg only. drl-compress runs its controllers and
aggregates the decoded updates by their mean, or (drl-compress-trimmed) by a 20%-trimmed mean. "Rounds lost" counts rounds that were not aggregated or not
recorded (metrics.jsonl rows missing); it must be 0. The RL counterpart (Fusion on LunarLander with one
faulty agent of five, 3 seeds) is `benchmarks/rl_heterogeneity.py`.
Results: benchmarks/results/robustness/ (<rule>-<attack>-seed<k>.jsonl, table.md).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.common import ROOT, benchmark_parser, command_line, fmt, run_app, write_jsonl, write_table
from fedrl_app.server.recorder import read_jsonl

OUT = ROOT / "benchmarks" / "results" / "robustness"
RULES = {"fedavg": {"strategy": "fedavg"}, "fedmedian": {"strategy": "fedmedian"},
         "fedtrimmedavg": {"strategy": "fedtrimmedavg", "trimmed-beta": 0.2},
         "krum": {"strategy": "krum", "krum-malicious": 2},
         "drl-compress": {"strategy": "drl-compress"},
         "drl-compress-trimmed": {"strategy": "drl-compress", "update-aggregation": "trimmed-mean", "trimmed-beta": 0.2}}
ATTACKS = {"clean": {}, "sign-flip": {"byzantine-fraction": 0.2, "byzantine-attack": "sign-flip"},
           "scale": {"byzantine-fraction": 0.2, "byzantine-attack": "scale", "byzantine-scale": 10.0},
           "sparse-scale": {"byzantine-fraction": 0.2, "byzantine-attack": "sparse-scale", "byzantine-scale": 10.0},
           "weight-inflation": {"byzantine-fraction": 0.2, "byzantine-attack": "weight-inflation"}}
MALFORMED = {a: {"byzantine-fraction": 0.2, "byzantine-attack": a}
             for a in ("nan", "wrong-shape", "pickle-exploit", "metadata-bomb")}


def rounds_lost(rows: list[dict], rounds: int) -> int:
    """Rounds missing from metrics.jsonl, or recorded with no client update aggregated."""
    recorded = {r["round"] for r in rows if r["round"] == 0 or r.get("clients-accepted", 0) > 0}
    return sum(1 for k in range(rounds + 1) if k not in recorded)


def report(command: str, rounds: int) -> str:
    lines = [f"MNIST, 10 clients, 20% attackers (partitions 0 and 1), {rounds} rounds. Command: `{command}`", "",
             "Well-formed attacks (final test accuracy):", "",
             "| rule | " + " | ".join(ATTACKS) + " | replies refused | claims clipped | rounds lost |",
             "|---|" + "---|" * (len(ATTACKS) + 3)]
    for rule in RULES:
        cells, refused, clipped, lost = [], 0, 0, 0
        for attack in ATTACKS:
            runs = [read_jsonl(p) for p in sorted(OUT.glob(f"{rule}-{attack}-seed*.jsonl"))]
            cells.append(fmt([r[-1]["accuracy"] for r in runs], ".4f", "n/a" if attack == "sparse-scale"
                             and "drl-compress" not in rule else "not run"))
            refused += sum(row.get("clients-dropped", 0) for r in runs for row in r)
            clipped += sum(row.get("examples-clipped", 0) for r in runs for row in r)
            lost += sum(rounds_lost(r, rounds) for r in runs)
        lines.append(f"| {rule} | " + " | ".join(cells) + f" | {refused} | {clipped} | {lost} |")
    clean = [read_jsonl(p)[-1]["accuracy"] for p in sorted(OUT.glob("fedavg-clean-seed*.jsonl"))]
    lines += ["", "Malformed replies, FedAvg (the server refuses them before aggregation):", "",
              "| attack | final acc. | clean final acc. | replies refused | logged reason | rounds lost |",
              "|---|---|---|---|---|---|"]
    for attack in MALFORMED:
        runs = [read_jsonl(p) for p in sorted(OUT.glob(f"fedavg-{attack}-seed*.jsonl"))]
        if not runs:
            lines.append(f"| {attack} | not run | | | | |")
            continue
        refused = sum(row.get("clients-dropped", 0) for r in runs for row in r)
        reasons = sorted({why for r in runs for row in r for why in row.get("drop-reasons", [])})
        lines.append(f"| {attack} | {fmt([r[-1]['accuracy'] for r in runs], '.4f')} | {fmt(clean, '.4f', '-')} | "
                     f"{refused} | {'; '.join(reasons) if reasons else '-'} | "
                     f"{sum(rounds_lost(r, rounds) for r in runs)} |")
    table = write_table(lines, OUT)
    return table


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    parser.add_argument("--attacks", nargs="*", default=list(ATTACKS), choices=list(ATTACKS))
    parser.add_argument("--malformed", nargs="*", default=list(MALFORMED), choices=list(MALFORMED),
                        help="malformed-reply attacks, run with FedAvg")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    command = command_line("benchmarks.robustness", args.command)
    if not args.report_only:
        runs = [(rule, attack, ATTACKS[attack]) for rule in args.rules for attack in args.attacks]
        runs += [("fedavg", attack, MALFORMED[attack]) for attack in args.malformed]
        runs = [r for r in runs if not (r[1] == "sparse-scale" and "drl-compress" not in r[0])]  # its path
        for seed in args.seeds:
            for rule, attack, attack_config in runs:
                overrides = {**RULES[rule], **attack_config, "num-server-rounds": args.rounds,
                             "seed": seed, "wandb-mode": "disabled"}
                with tempfile.TemporaryDirectory() as scratch:
                    rows, _ = run_app(overrides, 10, Path(scratch), OUT / f"{rule}-{attack}-seed{seed}.log")
                write_jsonl(OUT / f"{rule}-{attack}-seed{seed}.jsonl", rows)
                print(f"{rule} {attack} seed {seed}: final {rows[-1]['accuracy']:.4f}", flush=True)
    print(report(command, args.rounds))


if __name__ == "__main__":
    main()
