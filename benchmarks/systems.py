"""Heterogeneous clients on the virtual clock: FedAvg, fixed top-k rates, a bandwidth rule, FedBuff and drl-compress.

    python -m benchmarks.systems --profiles mobile uniform --seeds 1 2 3       # the sweep
    python -m benchmarks.systems --report-only                                  # table + plot from saved runs
    python -m benchmarks.systems --methods fedavg topk-1 --profiles mobile --seeds 1 --rounds 10
    python -m benchmarks.systems --profiles mobile --width 4 --local-samples 400 --rounds 40 --set lr-decay-every=40
                                                            # uploads that cost; a 400-sample round is 1/15 of an
                                                            # epoch, so the default halving every 5 rounds is off

10 clients, Dirichlet α = 0.3, each run through the real Flower path with `systems-profile` set
(`fedrl_app/systems/profiles.py` documents the profiles and their sources). Time is the virtual
clock's: a synchronous round lasts as long as its slowest client's download + compute + upload of
the bytes it really sent; async runs consume arrivals in clock order. With `--deadline S`, late replies are dropped and runs are
labelled `<profile>-d<S>`; the `-partial` methods train only what fits before it (`local-work = "deadline"`).
`--width 4 --local-samples 400` is the setting where uploads cost time (a 13.7 MB CNN, FedScale's 400
samples a round: `benchmarks/upload_ceiling.py`), labelled `<profile>-w4-s400`. Async runs make
`async-rounds-factor` × rounds aggregations of K = 5 updates (about as many client updates as the
synchronous runs) with the lr decayed per client update. `drl-compress-shared-delay` is the time objective (no byte
cost; a message is charged the delay it adds to the round, `time-cost = "added-delay"`) and `pace-rule` its
hand-written counterpart (the densest update done before the last round's slowest download + compute). Below the
table, per setting: FedAvg's rounds to 97% at
free-upload round times (the floor of any upload policy) against the best fixed rate, i.e. the most that choosing
what to upload could gain there, and what drl-compress gained; then what the adaptive methods sent, by the
client's uplink band. Results: benchmarks/results/systems/
(<profile>-<method>-seed<k>.jsonl, table.md, accuracy_vs_sim_time.png).
"""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.common import (  # noqa: E402
    ROOT,
    benchmark_parser,
    command_line,
    first_round_reaching,
    fmt,
    run_and_save,
    run_config_overrides,
    save_figure,
    write_table,
)
from fedrl_app.agents.sync_controller import DENSE_DECISIONS  # noqa: E402
from fedrl_app.config import RunConfig  # noqa: E402
from fedrl_app.server.recorder import read_jsonl  # noqa: E402
from fedrl_app.systems.profiles import SystemsModel  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "systems"
TARGETS = (0.97, 0.98)
NUM_CLIENTS = 10
PROFILES = ("uniform", "mobile")
DRL = {"strategy": "drl-compress", "controller-features": "resources", "time-penalty": 0.1}
METHODS: dict[str, dict] = {
    "fedavg": {"strategy": "fedavg"},
    **{f"topk-{pct:g}": {"strategy": "drl-compress", "sync-policy": "compressed", "topk-ratio": pct / 100}
       for pct in (0.1, 0.3, 1, 3, 10)},
    "bandwidth-rule": {"strategy": "drl-compress", "sync-policy": "bandwidth-rule", "topk-ratio": 0.01},
    # the densest update that adds no delay to the round (the server broadcasts the last round's pace)
    "pace-rule": {"strategy": "drl-compress", "sync-policy": "pace-rule", "topk-ratio": 0.01},
    # ... with each coordinate averaged over the clients that sent it: a slow client's top-k reply beside
    # dense ones no longer shrinks the step on the coordinates it left out
    "pace-rule-sent-mean": {"strategy": "drl-compress", "sync-policy": "pace-rule", "topk-ratio": 0.01,
                            "update-aggregation": "sent-mean"},
    "fedbuff": {"strategy": "fedavg", "async-aggregation": True},
    # the fixed rates on the async clock too, so drl-compress-async has a like-for-like baseline
    **{f"topk-{pct:g}-async": {"strategy": "drl-compress", "sync-policy": "compressed", "topk-ratio": pct / 100,
                               "async-aggregation": True} for pct in (1, 10)},
    "drl-compress": DRL,
    "drl-compress-async": {**DRL, "async-aggregation": True},
    # one controller learned on the server from every client's transitions (issue 14: ~20 decisions per
    # client-run are too few for a per-client DQN; shared, it sees ~10x as many)
    "drl-compress-shared": {**DRL, "controller-sharing": "shared"},
    # the time objective: no byte cost, and a message is charged only the delay it adds to the round (its
    # download + compute + upload past the slowest download + compute, which the server broadcasts)
    "drl-compress-shared-delay": {**DRL, "controller-sharing": "shared", "time-cost": "added-delay",
                                  "bytes-penalty": 0.0},
    # the time objective with the pace rule as one more action, where each controller starts: it does what the rule
    # does until it learns that something else pays more (per client: its own link, compute and data)
    # (and a dense reply does not carry the error-feedback residual: in the first runs, "-flush", a client that
    # had sent top-0.1% for k rounds and then went dense sent a k-fold step, and the global model dipped)
    "drl-compress-pace": {**DRL, "time-cost": "added-delay", "bytes-penalty": 0.0, "controller-actions": "with-pace",
                          "update-aggregation": "sent-mean", "residual-on-dense": "drop"},
    "drl-compress-pace-flush": {**DRL, "time-cost": "added-delay", "bytes-penalty": 0.0,
                                "controller-actions": "with-pace", "update-aggregation": "sent-mean",
                                "residual-on-dense": "flush"},
    # partial work under the deadline (FedScale's deadline-aware training): needs --deadline
    "fedavg-partial": {"strategy": "fedavg", "local-work": "deadline"},
    "drl-compress-partial": {**DRL, "local-work": "deadline"},
}
NEEDS_DEADLINE = ("fedavg-partial", "drl-compress-partial")


def time_split(rows: list[dict]) -> tuple[float, float, float]:
    """Shares of all client-seconds spent downloading, computing and uploading, over the run."""
    totals = [0.0, 0.0, 0.0]
    for r in rows:
        for split in (r.get("client-times-s") or {}).values():
            totals = [t + s for t, s in zip(totals, split)]
    whole = sum(totals) or 1.0
    return tuple(t / whole for t in totals)


def upload_ceiling(rows: list[dict]) -> float:
    """The share of the run's simulated time that free uplinks would remove: 1 − Σ_r T0_r / Σ_r T_r, with T_r the
    round's time and T0_r = min(T_r, max over its clients of download + compute). No uplink compression of this run's
    messages, however clever, could save more: an upper bound on what choosing what to send can buy. Without a round
    deadline only: with one, the deadline sets the round (late clients' times are not recorded, and partial work
    fills the time a smaller upload frees)."""
    total = sum(r.get("round-sim-time-s", 0.0) for r in rows)
    without_upload = sum(free_upload_round_s(r) for r in rows)
    return 1.0 - without_upload / total if total > 0 else 0.0


def free_upload_round_s(row: dict) -> float:
    """A round's time had its uploads been free: min(T_r, max over its clients of download + compute); T_r itself
    when nobody replied."""
    t = row.get("round-sim-time-s", 0.0)
    return min(t, max((d + c for d, c, _ in (row.get("client-times-s") or {}).values()), default=t))


def free_upload_floor_h(rows: list[dict], target: float) -> float | None:
    """Simulated hours to `target` had this run's uploads been free: Σ over the rounds up to the first that reaches
    it of min(T_r, max over its clients of download + compute). Of a dense run (FedAvg) this is the floor of any
    upload policy that needs as many rounds as dense updates do (compression does not make a round teach more)."""
    hit = first_round_reaching(rows, "accuracy", target)
    if hit is None:
        return None
    return sum(free_upload_round_s(r) for r in rows if r["round"] <= hit["round"]) / 3600


FIXED_RATES = ("fedavg", *(m for m in METHODS if re.fullmatch(r"topk-[0-9.]+", m)))  # dense is a fixed rate too


def summarise(rows: list[dict]) -> dict:
    """One run's numbers for the table."""
    out = {"final": rows[-1]["accuracy"], "sim-h": rows[-1].get("sim-time-s", 0.0) / 3600,
           "late": sum(r.get("clients-late", 0) for r in rows),
           "unavailable": sum(r.get("clients-unavailable", 0) for r in rows)}
    for target in TARGETS:
        hit = first_round_reaching(rows, "accuracy", target)
        out[f"h-to-{target}"] = hit["sim-time-s"] / 3600 if hit else None
        out[f"mb-to-{target}"] = hit["uplink-bytes-total"] / 1e6 if hit else None
    out["download"], out["compute"], out["upload"] = time_split(rows)
    out["upload-ceiling"] = upload_ceiling(rows)
    return out


def setting_name(profile: str, deadline: float, width: int = 1, local_samples: int = 0,
                 clients: int = NUM_CLIENTS) -> str:
    """How runs are labelled: the profile, then the round deadline, the CNN's width, fixed local work and the
    number of clients where they are not the defaults (`mobile-d600`, `mobile-w4-s400`, `mobile-c100`)."""
    return (profile + (f"-d{deadline:g}" if deadline > 0 else "") + (f"-w{width}" if width != 1 else "")
            + (f"-s{local_samples}" if local_samples else "") + (f"-c{clients}" if clients != NUM_CLIENTS else ""))


def settings() -> list[str]:
    """Every profile/deadline label with saved runs, profiles in PROFILES order."""
    found = {p.name[: p.name.rindex(f"-{m}-seed")] for m in METHODS for p in OUT.glob(f"*-{m}-seed*.jsonl")}
    return sorted(found, key=lambda s: (PROFILES.index(s.split("-")[0]) if s.split("-")[0] in PROFILES else 99, s))


def load_runs(setting: str, method: str) -> list[list[dict]]:
    """A setting's saved runs of one method, in seed order."""
    return [rows for _, rows in sorted(runs_by_seed(setting, method).items())]


def has_deadline(setting: str) -> bool:
    """Whether a setting's label names a round deadline (`mobile-d400`): the deadline then sets the round."""
    return re.search(r"-d[0-9]", setting) is not None


def report(command: str) -> str:
    lines = [f"MNIST, {NUM_CLIENTS} clients (`-cN` settings: N, sampled as their run config says), Dirichlet α = 0.3, "
             f"on the virtual clock. Command: `{command}`", "",
             "| profile | method | seeds | sim hours to 97% | sim hours to 98% | uplink MB to 97% | final acc. | "
             "sim hours (run) | late (dropped) | unavailable | client time: download / compute / upload "
             "| time free uplinks would save |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    curves: dict[str, dict[str, list[list[dict]]]] = {}
    for profile in settings():
        for method in METHODS:
            runs = load_runs(profile, method)
            if not runs:
                continue
            curves.setdefault(profile, {})[method] = runs
            sums = [summarise(r) for r in runs]
            col = {k: [s[k] for s in sums] for k in sums[0]}
            split = " / ".join(f"{100 * sum(col[k]) / len(sums):.1f}%" for k in ("download", "compute", "upload"))
            lines.append(
                f"| {profile} | {method} | {len(sums)} | {fmt(col['h-to-0.97'], '.2f')} | {fmt(col['h-to-0.98'], '.2f')} "
                f"| {fmt(col['mb-to-0.97'], '.2f')} | {fmt(col['final'], '.4f')} | {fmt(col['sim-h'], '.2f')} "
                f"| {fmt(col['late'], '.0f')} | {fmt(col['unavailable'], '.0f')} | {split} "
                f"| {'n/a (deadline)' if has_deadline(profile) else fmt([100 * x for x in col['upload-ceiling']], '.1f') + '%'} |")
    lines += headroom_lines()
    lines += decision_lines()
    table = write_table(lines, OUT)
    _plot(curves)
    return table


def seed_of(path: Path) -> int:
    """The seed in a saved run's file name (`<setting>-<method>-seed<k>.jsonl` or `.clients.jsonl`)."""
    return int(path.name[path.name.rindex("-seed") + 5:].split(".")[0])


def runs_by_seed(setting: str, method: str) -> dict[int, list[dict]]:
    """A setting's saved runs of one method, keyed by seed."""
    return {seed_of(p): read_jsonl(p)
            for p in OUT.glob(f"{setting}-{method}-seed*.jsonl") if not p.name.endswith(".clients.jsonl")}


LEARNED = ("drl-compress", "drl-compress-shared", "drl-compress-shared-delay", "drl-compress-pace-flush",
           "drl-compress-pace")  # the synchronous learned controllers
# ... and the hand-written rules that also adapt to the link
ADAPTIVE = (*LEARNED, "bandwidth-rule", "pace-rule", "pace-rule-sent-mean")


def headroom_lines(target: float = TARGETS[0]) -> list[str]:
    """Per setting and seed with a FedAvg run that reaches `target`: how much time any upload policy could gain over
    the best fixed rate, and what the learned controllers gained. The floor is FedAvg's rounds to `target` at
    free-upload round times (`free_upload_floor_h`); the best fixed rate is the fastest of FedAvg and the synchronous
    top-k runs of that seed."""
    lines = ["", f"What choosing what to upload could buy, to {target:.0%}: the floor is FedAvg's rounds to {target:.0%} "
             "with every upload free (no upload policy is faster unless its rounds teach more than dense ones); the "
             "best fixed rate is the fastest of FedAvg and the fixed top-k runs of the same seed. Mean ± std over "
             "seeds.", "",
             "| setting | seeds | FedAvg, rounds to target | FedAvg, sim hours | floor: the same rounds, uploads free "
             "| best fixed rate, sim hours (which) | best fixed ÷ floor: the most any policy could gain "
             + "".join(f"| {m}, sim hours (÷ best fixed) " for m in ADAPTIVE) + "|", "|---" * (7 + len(ADAPTIVE)) + "|"]
    for setting in settings():
        if has_deadline(setting):
            continue  # the deadline sets the round (see `upload_ceiling`)
        fixed = {m: runs_by_seed(setting, m) for m in FIXED_RATES}
        adaptive = {m: runs_by_seed(setting, m) for m in ADAPTIVE}
        seeds = []
        for seed, fedavg in sorted(fixed["fedavg"].items()):
            hit = first_round_reaching(fedavg, "accuracy", target)
            if hit is None:
                continue
            times = {m: summarise(runs[seed])[f"h-to-{target}"] for m, runs in fixed.items() if seed in runs}
            best = min((m for m in times if times[m] is not None), key=times.get)
            seeds.append({"rounds": hit["round"], "fedavg": times["fedavg"], "floor": free_upload_floor_h(fedavg, target),
                          "best": times[best], "which": best,
                          **{m: summarise(runs[seed])[f"h-to-{target}"] for m, runs in adaptive.items() if seed in runs}})
        if not seeds:
            continue
        col = {k: [x[k] for x in seeds] for k in ("rounds", "fedavg", "floor", "best", "which")}
        cells = []
        for m in ADAPTIVE:
            ran = [x for x in seeds if m in x]
            if not ran:
                cells.append("not run")
                continue
            ratio = [x[m] / x["best"] if x[m] is not None else None for x in ran]
            cells.append(fmt([x[m] for x in ran], ".2f")
                         + (f" ({fmt(ratio, '.2f')}×)" if any(r is not None for r in ratio) else ""))
        lines.append(f"| {setting} | {len(seeds)} | {fmt(col['rounds'], '.1f')} | {fmt(col['fedavg'], '.2f')} "
                     f"| {fmt(col['floor'], '.2f')} | {fmt(col['best'], '.2f')} ({', '.join(sorted(set(col['which'])))}) "
                     f"| {fmt([x['best'] / x['floor'] for x in seeds], '.2f')}× | " + " | ".join(cells) + " |")
    return lines


LINK_BANDS = ((0.0, 3.0), (3.0, 12.0), (12.0, float("inf")))  # uplink Mbit/s: FedScale's slow quarter, the middle, fast


def link_band(mbps: float) -> str:
    """A client's uplink band as a label: "< 3", "3–12" or "≥ 12" Mbit/s."""
    low, high = next(b for b in LINK_BANDS if b[0] <= mbps < b[1])
    return f"< {high:g}" if low == 0 else f"≥ {low:g}" if high == float("inf") else f"{low:g}–{high:g}"


def decisions_by_link(client_rows: list[dict], uplink_mbps: dict[int, float]) -> dict[str, dict]:
    """What the clients sent, grouped by their uplink band: client-rounds, the shares sent dense, compressed and
    skipped, and the median top-k rate of the compressed ones (raise/lower-compression send compressed too)."""
    out: dict[str, dict] = {}
    for band in (link_band(low) for low, _ in LINK_BANDS):
        rows = [r for r in client_rows if link_band(uplink_mbps[r["partition_id"]]) == band and r.get("sync_decision")]
        if not rows:
            continue
        dense = sum(r["sync_decision"] in DENSE_DECISIONS for r in rows)
        skip = sum(r["sync_decision"] == "skip" for r in rows)
        rates = sorted(r["compression_rate"] for r in rows if r["sync_decision"] not in (*DENSE_DECISIONS, "skip"))
        out[band] = {"client-rounds": len(rows), "dense": dense / len(rows), "skip": skip / len(rows),
                     "compressed": (len(rows) - dense - skip) / len(rows),
                     "median-rate": float(statistics.median(rates)) if rates else None}
    return out


def decision_lines() -> list[str]:
    """Per setting, adaptive method (the learned controllers and the rules) and uplink band: what was sent, over
    every seed."""
    lines = ["", "What the controllers sent, by the client's uplink (every client-round of every seed with a saved "
             "per-client log; compressed includes raise/lower-compression, which send at the new rate):", "",
             "| setting | method | seeds | uplink Mbit/s | client-rounds | dense | compressed (median top-k) | skip |",
             "|---|---|---|---|---|---|---|---|"]
    for setting in settings():
        profile = setting.split("-")[0]
        for method in ADAPTIVE:
            paths = sorted(OUT.glob(f"{setting}-{method}-seed*.clients.jsonl"))
            if not paths:
                continue
            rows, uplink = [], {}
            for path in paths:
                seed = seed_of(path)
                model = SystemsModel(profile, seed)
                mine = read_jsonl(path)
                # one band table over seeds: key partitions by (seed, partition)
                for r in mine:
                    uplink[(seed, r["partition_id"])] = model.profile(r["partition_id"]).uplink_kbps / 1000
                rows += [{**r, "partition_id": (seed, r["partition_id"])} for r in mine]
            for band, d in decisions_by_link(rows, uplink).items():
                rate = "-" if d["median-rate"] is None else f"{d['median-rate']:.3g}"
                lines.append(f"| {setting} | {method} | {len(paths)} | {band} | {d['client-rounds']} | {d['dense']:.0%} "
                             f"| {d['compressed']:.0%} ({rate}) | {d['skip']:.0%} |")
    return lines


def _plot(curves: dict[str, dict[str, list[list[dict]]]]) -> None:
    if not curves:
        return
    fig, axes = plt.subplots(1, len(curves), figsize=(7 * len(curves), 4.6), squeeze=False)
    for ax, (profile, methods) in zip(axes[0], curves.items()):
        for i, (method, runs) in enumerate(methods.items()):
            for j, rows in enumerate(runs):
                ax.plot([r.get("sim-time-s", 0.0) / 3600 for r in rows], [r["accuracy"] for r in rows],
                        color=f"C{i % 10}", ls="-" if i < 10 else "--", lw=1, alpha=0.8,
                        label=method if j == 0 else None)
        for target in TARGETS:
            ax.axhline(target, color="grey", ls=":", lw=0.8)
        ax.set(xlabel="simulated hours", ylabel="server test accuracy", ylim=(0.85, 1.0),
               title=f"{profile}: accuracy vs simulated time (one line per seed)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, OUT / "accuracy_vs_sim_time.png")


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--profiles", nargs="+", default=list(PROFILES), choices=list(PROFILES))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--async-rounds-factor", type=int, default=2)
    parser.add_argument("--deadline", type=float, default=0.0, help="round-deadline-s of the synchronous runs")
    parser.add_argument("--width", type=int, default=1, help="mnist-width (4: a 13.7 MB model, uploads cost time)")
    parser.add_argument("--local-samples", type=int, default=0,
                        help="fixed local work (local-work = samples) of this many examples a round; 0: full epochs")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra run-config overrides for every run, appended to the runs' label "
                             "(e.g. local-test-fraction=0.05)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--clients", type=int, default=NUM_CLIENTS,
                        help="clients (partitions); sample a share per round with --set fraction-train=0.1")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    extra = run_config_overrides(args.set)
    OUT.mkdir(parents=True, exist_ok=True)
    command = command_line("benchmarks.systems", args.command)
    setting = lambda profile: (  # noqa: E731
        setting_name(profile, args.deadline, args.width, args.local_samples, args.clients)
        + "".join(f"-{k}{v}" for k, v in extra.items()))
    if not args.report_only:
        for seed in args.seeds:
            for profile in args.profiles:
                for method in args.methods:
                    if method in NEEDS_DEADLINE and args.deadline <= 0:
                        print(f"{method}: skipped, it needs --deadline", flush=True)
                        continue
                    if method in NEEDS_DEADLINE and args.local_samples:
                        print(f"{method}: skipped, partial work and --local-samples both set the local work", flush=True)
                        continue
                    overrides = dict(METHODS[method])
                    overrides.update({"mnist-width": args.width, **extra})
                    if args.local_samples:
                        overrides.update({"local-work": "samples", "local-samples": args.local_samples})
                    factor = args.async_rounds_factor if overrides.get("async-aggregation") else 1
                    overrides.setdefault("lr-decay-every", RunConfig().lr_decay_every * factor)
                    overrides.update({"num-server-rounds": args.rounds * factor, "seed": seed, "wandb-mode": "disabled",
                                      "systems-profile": profile, "round-deadline-s": args.deadline})
                    name = f"{setting(profile)}-{method}-seed{seed}"
                    t0 = time.time()
                    rows, _ = run_and_save(overrides, args.clients, OUT, name)
                    print(f"{name}: final {rows[-1]['accuracy']:.4f}, {rows[-1].get('sim-time-s', 0) / 3600:.2f} "
                          f"simulated h, uplink {rows[-1]['uplink-bytes-total'] / 1e6:.2f} MB, {time.time() - t0:.0f}s",
                          flush=True)
    print(report(command))


if __name__ == "__main__":
    main()
