"""Communication-efficient MNIST: baselines vs drl-compress (sync, async, clustered) and a fixed-policy ablation.

    python -m benchmarks.mnist_compression                      # all methods, 3 seeds
    python -m benchmarks.mnist_compression --report-only        # table + plots from saved runs
    python -m benchmarks.mnist_compression --methods fedavg drl-compress --seeds 1 --rounds 10

10 clients, Dirichlet α=0.3, each run through the real Flower path. Async runs make
`async-rounds-factor` × rounds aggregations of K=5 updates each, so every method does
about the same number of client updates; their learning rate decays every
`async-rounds-factor` × lr-decay-every aggregations, i.e. after as many client updates as
the synchronous runs'. Results: benchmarks/results/mnist_compression/
(<method>-seed<k>.jsonl and .clients.jsonl, table.md, accuracy_vs_uplink.png,
staleness.png, decisions.png, codec_cost.json).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

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
from fedrl_app.config import RunConfig  # noqa: E402
from fedrl_app.server.recorder import read_jsonl  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "mnist_compression"
TARGET = 0.97
NUM_CLIENTS = 10
METHODS: dict[str, dict] = {
    "fedavg": {"strategy": "fedavg"},
    "fedprox": {"strategy": "fedprox"},
    "scaffold": {"strategy": "scaffold"},
    "drl-compress": {"strategy": "drl-compress"},                 # own-gain reward, λ = 0.1
    "drl-compress-l1": {"strategy": "drl-compress", "bytes-penalty": 1.0},
    "drl-compress-global-gain": {"strategy": "drl-compress", "controller-reward": "global-gain"},
    "drl-compress-async": {"strategy": "drl-compress", "async-aggregation": True},
    "drl-compress-clustered": {"strategy": "drl-compress", "clustering": True},
    "always-compressed": {"strategy": "drl-compress", "sync-policy": "compressed"},
}


def summarise(rows: list[dict], clients: list[dict]) -> dict:
    hit = first_round_reaching(rows, "accuracy", TARGET)
    sends = sum(1 for c in clients if c.get("sync_decision", "full") != "skip")
    return {
        "final": rows[-1]["accuracy"],
        # clients' own held-out data, on the model each receives (its cluster's when clustered)
        "client-final": rows[-1].get("client-eval-accuracy"),
        "best": max(r["accuracy"] for r in rows),
        "rounds-to-target": hit["round"] if hit else None,
        "uplink-mb-to-target": hit["uplink-bytes-total"] / 1e6 if hit else None,
        "uplink-mb-total": rows[-1]["uplink-bytes-total"] / 1e6,
        "syncs-per-client": sends / NUM_CLIENTS,
        "updates": len(clients),
        "personalized": rows[-1].get("personalized-accuracy"),
    }


def codec_cost(repeats: int = 20) -> dict:
    """Codec work vs Flower's plain FedAvg aggregation step, for 10 clients' updates.

    Plain step: `aggregate_arrayrecords` over 10 replies carrying dense float32 arrays
    (deserialization included). drl-compress step: decode 10 top-1% + int8 payloads and
    take their weighted mean. Client side: one encode.
    """
    from flwr.app import MetricRecord, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    from fedrl_app.protocol.codecs import CompressionConfig, decode_update, encode_update
    from fedrl_app.protocol.records import to_record
    from fedrl_app.tasks.mnist import Net
    from strategies.strategy_utils import mean_arrays

    rng = np.random.default_rng(0)
    weights = {k: v.numpy() for k, v in Net().state_dict().items()}
    spec = {k: (v.shape, str(v.dtype)) for k, v in weights.items()}
    deltas = [{k: rng.normal(scale=1e-3, size=v.shape).astype(np.float32) for k, v in weights.items()}
              for _ in range(NUM_CLIENTS)]
    dense = [RecordDict({"arrays": to_record(d),
                         "metrics": MetricRecord({"num-examples": 100})}) for d in deltas]
    config = CompressionConfig(topk_ratio=0.01, quantize=True)

    def timed(fn) -> float:
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        return 1e3 * (time.perf_counter() - t0) / repeats

    payloads = [encode_update(d, None, weights, config)[0] for d in deltas]
    t_encode = timed(lambda: encode_update(deltas[0], None, weights, config))
    t_plain = timed(lambda: aggregate_arrayrecords(dense, "num-examples"))
    t_compressed = timed(lambda: mean_arrays([decode_update(p, spec) for p in payloads], [100.0] * NUM_CLIENTS))
    return {"client-encode-ms": t_encode, "plain-aggregation-ms": t_plain, "decode-and-aggregate-ms": t_compressed,
            "server-ratio": t_compressed / t_plain, "client-encode-over-plain-aggregation": t_encode / t_plain,
            **payload_sizes()}


def payload_sizes() -> dict:
    """Serialized (protobuf) size of one client's CNN update, as the byte meter counts it: dense vs top-1% + int8."""
    from flwr.app import RecordDict

    from fedrl_app.protocol.codecs import CompressionConfig, encode_update
    from fedrl_app.protocol.records import recorddict_nbytes, to_record
    from fedrl_app.tasks.mnist import Net

    rng = np.random.default_rng(0)
    weights = {k: v.numpy() for k, v in Net().state_dict().items()}
    delta = {k: rng.normal(scale=1e-3, size=v.shape).astype(np.float32) for k, v in weights.items()}

    def compressed(gaps: bool) -> int:
        payload = encode_update(delta, None, weights, CompressionConfig(topk_ratio=0.01, gap_indices=gaps))[0]
        return recorddict_nbytes(RecordDict({"delta-compressed": payload}))

    return {"dense-payload-bytes": recorddict_nbytes(RecordDict({"arrays": to_record(delta)})),
            "int32-index-payload-bytes": compressed(False), "gap-index-payload-bytes": compressed(True)}


def times(text: str) -> str:
    """'20.9 ± 3.3' -> '20.9 ± 3.3×'; '0.4 (1 of 2 not reached)' -> '0.4× (1 of 2 not reached)'."""
    if text == "not reached":
        return text
    head, sep, tail = text.partition(" (")
    return f"{head}×{sep}{tail}"


def report(methods: list[str], command: str) -> str:
    runs = {m: [(read_jsonl(p), read_jsonl(p.with_suffix(".clients.jsonl")))
                for p in sorted(OUT.glob(f"{m}-seed*.jsonl")) if not p.name.endswith(".clients.jsonl")]
            for m in methods}
    runs = {m: r for m, r in runs.items() if r}
    fedavg_mb = None
    if runs.get("fedavg"):
        fedavg_mb = statistics.mean(x for x in (summarise(*r)["uplink-mb-to-target"] for r in runs["fedavg"])
                                    if x is not None)
    lines = [f"MNIST, {NUM_CLIENTS} clients, Dirichlet α=0.3, target {TARGET:.0%}. Command: `{command}`", "",
             "| method | seeds | rounds | final acc. | best acc. | client-side acc. | rounds to 97% | uplink MB to 97% | "
             "FedAvg MB / method MB at 97% | uplink MB total | syncs per client |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m, seed_runs in runs.items():
        sums = [summarise(*r) for r in seed_runs]
        col = {k: [s[k] for s in sums] for k in sums[0]}
        ratio = [fedavg_mb / x if (x and fedavg_mb) else None for x in col["uplink-mb-to-target"]]
        lines.append(
            f"| {m} | {len(sums)} | {seed_runs[0][0][-1]['round']} | {fmt(col['final'], '.4f')} | {fmt(col['best'], '.4f')} "
            f"| {fmt(col['client-final'], '.4f', 'n/a')} "
            f"| {fmt(col['rounds-to-target'], '.1f')} | {fmt(col['uplink-mb-to-target'], '.2f')} | {times(fmt(ratio, '.1f'))} "
            f"| {fmt(col['uplink-mb-total'], '.2f')} | {fmt(col['syncs-per-client'], '.1f')} |")
    if (OUT / "codec_cost.json").exists():
        cost = json.loads((OUT / "codec_cost.json").read_text())
        lines += ["", f"Codec cost, 10 clients, 215,370-parameter CNN, top-1% + int8: Flower's plain FedAvg "
                  f"aggregation {cost['plain-aggregation-ms']:.1f} ms; decode + aggregate "
                  f"{cost['decode-and-aggregate-ms']:.1f} ms (ratio {cost['server-ratio']:.2f}); one client encode "
                  f"{cost['client-encode-ms']:.1f} ms (ratio {cost['client-encode-over-plain-aggregation']:.2f}). "
                  "A round of local training takes seconds, so neither is a bottleneck (timed with int32 indices; "
                  "gap decoding adds one cumulative sum per layer)."]
        if "gap-index-payload-bytes" in cost:
            lines += ["", f"One client's update, serialized: dense float32 {cost['dense-payload-bytes'] / 1e3:.1f} KB; "
                      f"top-1% + int8 with int32 indices {cost['int32-index-payload-bytes'] / 1e3:.1f} KB; with uint16 "
                      f"gap-coded indices (the codec's default, used by the runs above) "
                      f"{cost['gap-index-payload-bytes'] / 1e3:.1f} KB "
                      f"({cost['dense-payload-bytes'] / cost['gap-index-payload-bytes']:.0f}× smaller than dense)."]
    table = write_table(lines, OUT)
    _plots(runs)
    return table


def _plots(runs: dict) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, (m, seed_runs) in enumerate(runs.items()):
        for j, (rows, _) in enumerate(seed_runs):
            trained = rows[1:]  # round 0 has sent nothing: no place on a log axis
            ax.plot([r["uplink-bytes-total"] / 1e6 for r in trained], [r["accuracy"] for r in trained],
                    color=f"C{i}", lw=1, alpha=0.8, label=m if j == 0 else None)
    ax.axhline(TARGET, color="grey", ls="--", lw=0.8)
    ax.set(xscale="log", xlabel="cumulative uplink MB", ylabel="server test accuracy", ylim=(0.8, 1.0),
           title="accuracy vs uplink bytes (one line per seed)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save_figure(fig, OUT / "accuracy_vs_uplink.png")

    taus = [t for rows, _ in runs.get("drl-compress-async", []) for r in rows for t in r.get("staleness", [])]
    if taus:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.hist(taus, bins=np.arange(max(taus) + 2) - 0.5, rwidth=0.85)
        ax.set(xlabel="staleness τ (model versions behind)", ylabel="updates",
               title=f"async drl-compress: staleness of {len(taus)} updates")
        save_figure(fig, OUT / "staleness.png")

    if runs.get("drl-compress"):
        rows = runs["drl-compress"][0][0][1:]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        bottom = np.zeros(len(rows))
        for action in ("full", "compressed", "skip", "raise-compression", "lower-compression"):
            counts = np.array([r.get(f"sync-{action}", 0) for r in rows])
            ax1.bar([r["round"] for r in rows], counts, bottom=bottom, label=action)
            bottom += counts
        ax1.set(xlabel="round", ylabel="clients", title="controller decisions (seed 1 of the runs)")
        ax1.legend(fontsize=8)
        ax2.plot([r["round"] for r in rows], [r.get("controller-reward", np.nan) for r in rows], marker=".")
        ax2.set(xlabel="round", ylabel="mean reward", title="controller reward")
        ax2.grid(alpha=0.3)
        save_figure(fig, OUT / "decisions.png")


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--async-rounds-factor", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--payload-sizes", action="store_true", help="add payload sizes to codec_cost.json, report")
    parser.add_argument("--codec-cost", action="store_true", help="(re)time the codec into codec_cost.json, report")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    cost_path = OUT / "codec_cost.json"
    if args.payload_sizes:
        cost = json.loads(cost_path.read_text()) if cost_path.exists() else {}
        cost_path.write_text(json.dumps({**cost, **payload_sizes()}, indent=2))
    command = command_line("benchmarks.mnist_compression", args.command)
    if args.codec_cost or not (args.report_only or args.payload_sizes or cost_path.exists()):
        # timings: measure on an idle machine (a sweep running beside it inflates them); keeps payload sizes
        cost = json.loads(cost_path.read_text()) if cost_path.exists() else {}
        cost_path.write_text(json.dumps({**cost, **codec_cost()}, indent=2))
    if not (args.report_only or args.payload_sizes or args.codec_cost):
        for seed in args.seeds:
            for method in args.methods:
                overrides = dict(METHODS[method])
                factor = args.async_rounds_factor if overrides.get("async-aggregation") else 1
                rounds = args.rounds * factor
                # the schedule counts server versions; keep it per client update, as in the sync runs
                overrides.setdefault("lr-decay-every", RunConfig().lr_decay_every * factor)
                overrides.update({"num-server-rounds": rounds, "seed": seed, "wandb-mode": "disabled"})
                t0 = time.time()
                with tempfile.TemporaryDirectory() as scratch:
                    rows, clients = run_app(overrides, NUM_CLIENTS, Path(scratch), OUT / f"{method}-seed{seed}.log")
                write_jsonl(OUT / f"{method}-seed{seed}.jsonl", rows)
                write_jsonl(OUT / f"{method}-seed{seed}.clients.jsonl", clients)
                print(f"{method} seed {seed}: final {rows[-1]['accuracy']:.4f}, uplink "
                      f"{rows[-1]['uplink-bytes-total'] / 1e6:.2f} MB, {time.time() - t0:.0f}s", flush=True)
    print(report(args.methods, command))


if __name__ == "__main__":
    main()
