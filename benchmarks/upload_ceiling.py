"""When can choosing what to upload save time? The virtual clock's answer for a profile, a model size and local work.

    python -m benchmarks.upload_ceiling                                  # uniform and mobile, seeds 1-3
    python -m benchmarks.upload_ceiling --profiles mobile file:my_trace.csv --clients 100 --sample 20

No training: synchronous rounds are played on the clock of `fedrl_app/systems` alone. Each round,
`--sample` of `--clients` partitions are asked, those the profile makes unavailable drop out (the
server does not wait for them), and the round lasts as long as its slowest remaining client's
download + compute + upload (`fedrl_app/systems/clock.py`). For each model size (dense bytes) and
number of samples a client trains on per round, the table gives the mean round time with dense
uploads, the share of it that free uploads would remove (the ceiling of any compression policy),
and how much faster rounds are with every upload at top-1% + int8 (the codec's 3 bytes per kept
entry) and top-10%. Results: benchmarks/results/upload_ceiling/table.md.
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import ROOT, benchmark_parser, command_line, fmt, write_table
from fedrl_app.protocol.codecs import COMPRESSED_BYTES_PER_ENTRY
from fedrl_app.systems.clock import client_time, synchronous_round_s
from fedrl_app.systems.profiles import SystemsModel

OUT = ROOT / "benchmarks" / "results" / "upload_ceiling"
# dense float32 MB: this project's MNIST CNN at widths 1, 2, 4 (`mnist-width`), and ResNet-18 (11.7M parameters)
MODELS_MB = {**{f"MNIST CNN, width {w} ({n / 1e6:.2f}M)": 4 * n / 1e6
                for w, n in ((1, 215_370), (2, 857_738), (4, 3_423_498))}, "ResNet-18 (11.7M)": 46.8}
# samples trained per round: FedScale's default 20 local steps × batch 20, 4× that, and one epoch of an average
# 10-client MNIST partition (6,000 samples)
SAMPLES = (400, 1600, 6000)
RATES = (0.01, 0.1)


def mean_round_s(model: SystemsModel, clients: int, sample: int, rounds: int, dense: int, upload: int,
                 samples: int, seed: int) -> float:
    """Mean synchronous round time over `rounds` rounds: `sample` of `clients` asked (the same draw for every
    upload size), the unavailable ones not waited for."""
    rng = np.random.default_rng([seed, clients, sample])
    total = 0.0
    for server_round in range(1, rounds + 1):
        asked = rng.choice(clients, size=min(sample, clients), replace=False)
        times = [client_time(model.profile(int(p)), dense, samples, upload).total_s
                 for p in asked if model.available(int(p), server_round)]
        total += synchronous_round_s(times, late_or_failed=0, deadline_s=0.0)
    return total / rounds


def measure(profile: str, seed: int, clients: int, sample: int, rounds: int) -> list[dict]:
    model = SystemsModel(profile, seed)
    rows = []
    for name, mb in MODELS_MB.items():
        dense = int(mb * 1e6)
        for samples in SAMPLES:
            at = lambda upload: mean_round_s(model, clients, sample, rounds, dense, upload, samples, seed)  # noqa: E731
            dense_s, free_s = at(dense), at(0)
            row = {"profile": profile, "model": name, "samples": samples, "seed": seed,
                   "dense-s": dense_s, "ceiling": 1 - free_s / dense_s}
            for rate in RATES:
                row[f"speedup-{rate:g}"] = dense_s / at(int(COMPRESSED_BYTES_PER_ENTRY * rate * dense))
            rows.append(row)
    return rows


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--profiles", nargs="+", default=["uniform", "mobile"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--sample", type=int, default=10, help="clients asked per round")
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    rows = [r for profile in args.profiles for seed in args.seeds
            for r in measure(profile, seed, args.clients, args.sample, args.rounds)]
    lines = [f"Synchronous rounds on the virtual clock, {args.sample} of {args.clients} clients asked per round, "
             f"{args.rounds} rounds, seeds {args.seeds} (mean ± std over seeds). Command: "
             f"`{command_line('benchmarks.upload_ceiling', args.command)}`", "",
             "| profile | model (dense MB) | samples per client-round | mean round (s), dense uploads "
             "| round time free uploads would save | rounds faster with top-1% + int8 | with top-10% + int8 |",
             "|---|---|---|---|---|---|---|"]
    for profile in args.profiles:
        for name, mb in MODELS_MB.items():
            for samples in SAMPLES:
                group = [r for r in rows if (r["profile"], r["model"], r["samples"]) == (profile, name, samples)]
                col = {k: [r[k] for r in group] for k in group[0]}
                lines.append(f"| {profile} | {name}, {mb:.2f} | {samples} | {fmt(col['dense-s'], '.1f')} "
                             f"| {fmt([100 * c for c in col['ceiling']], '.1f')}% | {fmt(col['speedup-0.01'], '.2f')}× "
                             f"| {fmt(col['speedup-0.1'], '.2f')}× |")
    OUT.mkdir(parents=True, exist_ok=True)
    print(write_table(lines, OUT))


if __name__ == "__main__":
    main()
