"""Federated DQN on LunarLander when clients differ: per-client dynamics and faulty agents × Local, FedAvg, Fusion.

    python -m benchmarks.rl_heterogeneity                                    # every condition × method, 1 seed
    python -m benchmarks.rl_heterogeneity --conditions none reward-flip --methods fusion fedavg --seeds 1 2 3
    python -m benchmarks.rl_heterogeneity --report-only

Conditions: `none` (every client the nominal LunarLander-v3), `varied` (`env-variation = "varied"`:
gravity from −10 to −3.2 and wind from calm to 15, a variant per client), and one faulty agent of N
(partition 0, `byzantine-fraction` = 1/N) of each kind: `random-action`, `reward-flip`, FedPG-BR's
sign flip ×−2.5 (`scale` with `byzantine-scale = -2.5`), `noise` (Gaussian, 10 × the honest update's
RMS), and for Fusion `poison-rewards` / `poison-states` (shared experience only). Methods: `local`
(each agent alone, its own environment), `fedavg`, `fusion-param` (Fusion as first built:
`param-cosine` trust, raw-state filter, no experience scrutiny) and `fusion` (the defaults:
`update-cosine` trust, normalised filter, scrutinised experience).

Columns: the honest clients' final 100-episode return on their own environments, how many of them
solve (100-episode mean ≥ 200) and when; the global network's greedy return on the nominal
environment and on every client's variant (the mean over variants, at the last round; 5 episodes), and
the final model's on 100 fixed episodes, nominal and on the honest clients' environments; training and
acting FLOPs; uplink. Fusion's trust in the faulty client (its share of the weight, mean over rounds,
against 1/N) and how many of its shared batches were refused. Results:
benchmarks/results/rl_heterogeneity/ (<method>-<condition>-n<N>-seed<k>.json, table.md,
returns-<condition>.png, trust-n<N>.png).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import (
    ROOT,
    benchmark_parser,
    command_line,
    fmt,
    run_app,
    run_config_overrides,
    save_figure,
    write_table,
)  # noqa: E402
from benchmarks.lunarlander import client_curves, plot_returns, run_local  # noqa: E402
from fedrl_app.config import RunConfig  # noqa: E402
from fedrl_app.server.recorder import LAST_CHECKPOINT, load_checkpoint  # noqa: E402
from fedrl_app.server.registry import task_model  # noqa: E402
from fedrl_app.tasks.gym_rl import SOLVED_RETURN, evaluate_policy, moving_average_solved  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "rl_heterogeneity"
TASK = "lunarlander"
AGENT = {"agent": "double"}
CONDITIONS = {
    "none": {},
    "varied": {"env-variation": "varied"},
    "random-action": {"byzantine-attack": "random-action"},
    "reward-flip": {"byzantine-attack": "reward-flip"},
    "sign-flip-2.5": {"byzantine-attack": "scale", "byzantine-scale": -2.5},
    "noise": {"byzantine-attack": "noise"},
    "poison-rewards": {"byzantine-attack": "poison-rewards"},
    "poison-states": {"byzantine-attack": "poison-states"},
}
METHODS = {
    "local": {"local": True},
    "fedavg": {"strategy": "fedavg"},
    "fusion-param": {"strategy": "fusion", "trust": "param-cosine", "diversity-space": "raw"},
    "fusion": {"strategy": "fusion"},
}

FINAL_EPISODES = 100  # the final model's greedy episodes (the server's per-round evaluation plays 5)
FINAL_SEED = 20_000   # their first start state; the same for every run, so runs are compared on one set of episodes
LATE_SHARE = 0.4      # late dips: the last 40% of the rounds (61–100 of 100), when a client has had time to solve
DIP_BELOW = 100.0     # ... a client-round whose episodes average below half the solve bar is a dip


def final_greedy(run_dir: Path, n: int) -> dict:
    """The run's final model (the deployed one, where the strategy deploys another than it sends) on
    FINAL_EPISODES greedy episodes: the nominal environment, and under `env-variation` each partition's."""
    state = load_checkpoint(run_dir)
    cfg = RunConfig.from_run_config(json.loads((run_dir / "run.json").read_text())["config"])
    net = task_model(cfg)
    net.load_state_dict(state.get("deployed-arrays") or state["arrays"])
    out: dict = {"episodes": FINAL_EPISODES,
                 "nominal": evaluate_policy(net, cfg.task, FINAL_EPISODES, seed=FINAL_SEED)}
    if cfg.env_variation.strip() not in ("", "none"):
        played: dict[str, list[float]] = {}  # partitions sharing dynamics (N above the profile's variants) play once
        out["own-envs"] = {}
        for p in range(n):
            params = cfg.env_params(p)
            key = json.dumps(params, sort_keys=True)
            if key not in played:
                played[key] = evaluate_policy(net, cfg.task, FINAL_EPISODES, seed=FINAL_SEED, env_params=params)
            out["own-envs"][str(p)] = played[key]
    return out


def applies(method: str, condition: str) -> bool:
    """Poisoned experience exists only where experience is shared; a faulty local agent harms nobody."""
    if condition.startswith("poison-"):
        return method.startswith("fusion")
    return not (method == "local" and condition not in ("none", "varied"))


RUN_KEYS = ("task", "num-server-rounds", "steps-per-round", "seed", "wandb-mode", "fraction-evaluate",
            "byzantine-fraction", "dqn-train-frequency", "dqn-n-step")  # set by the sweep, or columns of their own


# Fusion's defaults that have changed, as runs saved before runs recorded their config ran them
# (trust-clip and trust-weighting until 2026-12-07; only with `trust = "update-cosine"`, where they apply)
EARLIER_FUSION_DEFAULTS = {"trust-clip": "median-update", "trust-weighting": "proportional"}


def run_settings(run: dict) -> dict:
    """The settings a saved run ran with beyond today's defaults' reach: its overrides, and the keys whose
    defaults have changed, from its recorded `config` or, for a run saved before configs were recorded,
    from the defaults of then."""
    overrides = dict(run.get("overrides") or {})
    changed_keys = set(EARLIER_FUSION_DEFAULTS)
    if "config" in run:
        return {**overrides, **{k: run["config"][k] for k in changed_keys if k in run["config"]}}
    if overrides.get("strategy") == "fusion" and overrides.get("trust", "update-cosine") == "update-cosine":
        return {**EARLIER_FUSION_DEFAULTS, **overrides}
    return overrides


def settings_label(run: dict) -> str:
    """The method as the table names it: plus any setting that differs from today's default (e.g.
    "fusion (trust-clip=median-update)"), so runs of other settings get rows of their own."""
    known = set(AGENT) | set(METHODS.get(run["method"], {})) | set(CONDITIONS.get(run["condition"], {})) | set(RUN_KEYS)
    defaults = RunConfig()
    changed = [f"{k}={v}" for k, v in sorted(run_settings(run).items())
               if k not in known and getattr(defaults, k.replace("-", "_"), None) != v]
    return f"{run['method']} ({', '.join(changed)})" if changed else run["method"]


def faulty(condition: str) -> set[int]:
    """Partitions that are faulty under a condition (partition 0 for the attacks)."""
    return set() if condition in ("none", "varied") else {0}


def own_env_final(curves: dict[int, dict], exclude: set[int]) -> float | None:
    """Mean over the partitions not in `exclude` of each one's last-100-episode return on its own environment
    (`curves`: `client_curves` of a run)."""
    finals = [float(np.mean(c["returns"][-100:])) for pid, c in curves.items() if pid not in exclude and c["returns"]]
    return float(np.mean(finals)) if finals else None


def share_of_clean(run: dict, clean: dict | None) -> float | None:
    """The honest clients' final return under attack as a share of the same partitions' return in the clean run
    of the same method, seed and settings (the issue's "keeps ≥ 90% of its clean final return"). None without a
    clean run, or where the clean return is ≤ 0: a share of a negative return means nothing."""
    if clean is None:
        return None
    bad = faulty(run["condition"])
    attacked = own_env_final(client_curves(run["clients"]), bad)
    baseline = own_env_final(client_curves(clean["clients"]), bad)
    return attacked / baseline if attacked is not None and baseline is not None and baseline > 0 else None


PROGRESS_STEPS = (20_000, 40_000, 60_000, 80_000, 100_000)  # env steps per client where the gap table looks
WEIGHT_BLOCKS = 5  # the faulty client's weight is averaged over this many equal blocks of rounds
STEADY_AFTER = 15  # rounds after which the global greedy return is judged for dips (the clients are past random play)


def own_env_return_at(curves: dict[int, dict], exclude: set[int], steps: int) -> float | None:
    """Mean over the partitions not in `exclude` of each one's 100-episode mean return over its episodes that
    ended by env step `steps` (None if one of them has no such episode yet)."""
    means = []
    for pid, c in curves.items():
        if pid in exclude:
            continue
        k = int(np.searchsorted(np.asarray(c["end-steps"]), steps, side="right"))
        if k == 0:
            return None
        means.append(float(np.mean(c["returns"][max(0, k - 100):k])))
    return float(np.mean(means)) if means else None


def faulty_weight_per_round(run: dict) -> tuple[list[int], list[float]]:
    """Each trust-weighted round and the faulty partitions' summed weight in it (NaN where none took part).

    The one reading of a faulty client's weight that the table, the gap table and the trust plot share."""
    bad = faulty(run["condition"])
    rows = [r for r in run["metrics"] if "trust-weights" in r]
    weights = []
    for r in rows:
        mine = [w for w, p in zip(r["trust-weights"], r["trust-partitions"]) if p in bad]
        weights.append(float(sum(mine)) if mine else float("nan"))
    return [r["round"] for r in rows], weights


def faulty_weight_blocks(run: dict, blocks: int = WEIGHT_BLOCKS) -> list[float | None]:
    """The faulty partitions' mean trust weight in each of `blocks` equal runs of rounds (None where absent)."""
    _, per_round = faulty_weight_per_round(run)
    means = []
    for chunk in np.array_split(np.asarray(per_round), blocks):
        present = chunk[~np.isnan(chunk)]
        means.append(float(present.mean()) if present.size else None)
    return means


def gap_lines(runs: list[dict], clean: dict[tuple, dict]) -> list[str]:
    """When the honest clients fall behind the clean run, and how much weight the faulty client had then: one row
    per attacked run, beside the clean run of the same method, seed and settings (its same partitions)."""
    attacked = sorted((r for r in runs if faulty(r["condition"]) and r["method"].startswith("fusion")),
                      key=lambda r: (r["n"], list(CONDITIONS).index(r["condition"]), settings_label(r), r["seed"]))
    if not attacked:
        return []
    steps = " / ".join(f"{s // 1000}k" for s in PROGRESS_STEPS)
    lines = ["", f"How the gap forms: the honest clients' 100-episode return (own env) by {steps} env steps per "
             "client, attacked / clean (same partitions, seed and settings), and the faulty client's mean trust "
             f"weight in each fifth of the rounds (1/N = fair).", "",
             "| N | condition | method | seed | honest return, attacked | same partitions, clean run "
             "| faulty client's weight by fifth of the run |", "|---" * 7 + "|"]
    for run in attacked:
        bad = faulty(run["condition"])
        ref = clean.get((run["n"], settings_label(run), run["seed"], run["train-frequency"], run["n-step"]))

        def at(r: dict) -> str:
            curves = client_curves(r["clients"])
            return " / ".join(fmt([own_env_return_at(curves, bad, s)], ".0f", "-") for s in PROGRESS_STEPS)

        weights = " / ".join("-" if w is None else f"{w:.3f}" for w in faulty_weight_blocks(run))
        lines.append(f"| {run['n']} | {run['condition']} | {settings_label(run)} | {run['seed']} | {at(run)} "
                     f"| {at(ref) if ref else '-'} | {weights} |")
    return lines


def seeds_cell(values: list, spec: str = ".1f") -> str:
    """Mean ± std over the seeds that measured a value (None: not measured), with how many did where not all
    ('-': none did)."""
    measured = [v for v in values if v is not None]
    if not measured:
        return "-"
    return fmt(measured, spec) + (f" ({len(measured)} of {len(values)} seeds)" if len(measured) < len(values) else "")


def dips_cell(dips: list[tuple[int, int]]) -> str:
    """The late dips of all seeds together: share and counts."""
    below, total = sum(d for d, _ in dips), sum(t for _, t in dips)
    return f"{below / total:.1%} ({below} of {total})" if total else "-"


def greedy_stats(returns: list[float], after: int = STEADY_AFTER) -> str:
    """The global greedy return per round after round `after`: mean, worst, rounds below 0, and the last round."""
    tail = np.array(returns[after:], dtype=float)
    return (f"{tail.mean():.0f} / {tail.min():.0f} / {int((tail < 0).sum())} / {tail[-1]:.0f}"
            if tail.size else "-")


def judges_sent_network(run: dict) -> bool:
    """Whether the run's model was not the network sent to the clients (Fusion, `fusion-deploy = "average"`), so
    that the server judged both."""
    return any("sent-return" in m for m in run["metrics"])


def deployed_lines(runs: list[dict]) -> list[str]:
    """Where the run's model is not the network sent to the clients (Fusion, `fusion-deploy = "average"`): both,
    judged in the same rounds on the same episodes' start states, one row per run."""
    both = sorted((r for r in runs if judges_sent_network(r)),
                  key=lambda r: (r["n"], r["condition"], settings_label(r), r["seed"]))
    if not both:
        return []
    late = 2 * STEADY_AFTER
    lines = ["", "The run's model against the network the clients start from (the server learner's), same runs: the "
             "global greedy return (5 episodes a round, nominal environment; both networks on the same episodes) as "
             "mean / worst / rounds below 0 / last round, "
             f"over rounds {STEADY_AFTER + 1}–last and {late + 1}–last.", "",
             f"| N | condition | method | seed | run's model (trust-weighted mix), rounds {STEADY_AFTER + 1}– "
             f"| sent network (after the server learner's steps), rounds {STEADY_AFTER + 1}– "
             f"| run's model, rounds {late + 1}– | sent network, rounds {late + 1}– |", "|---" * 8 + "|"]
    for run in both:
        rows = [m for m in run["metrics"] if m.get("round", 0) >= 1]
        mix, sent = [m["return"] for m in rows], [m["sent-return"] for m in rows]
        lines.append(f"| {run['n']} | {run['condition']} | {settings_label(run)} | {run['seed']} | {greedy_stats(mix)} "
                     f"| {greedy_stats(sent)} | {greedy_stats(mix, late)} | {greedy_stats(sent, late)} |")
    return lines


def late_dips(run: dict) -> tuple[int, int]:
    """(dips, client-rounds): over the last LATE_SHARE of the rounds, the honest clients' rounds whose finished
    episodes average below DIP_BELOW, of those with a finished episode. A solved client that falls back shows here,
    where the 100-episode final return averages it away."""
    bad = faulty(run["condition"])
    rounds = run.get("rounds") or max((r["round"] for r in run["clients"]), default=0)
    first = rounds - round(LATE_SHARE * rounds) + 1
    means = [np.mean(r["episode_returns"]) for r in run["clients"]
             if r["round"] >= first and r["partition_id"] not in bad and r["episode_returns"]]
    return int(sum(m < DIP_BELOW for m in means)), len(means)


def summarise(run: dict) -> dict:
    """Honest clients' own-environment results, the global network's, cost, and Fusion's trust in the faulty."""
    bad = faulty(run["condition"])
    all_curves = client_curves(run["clients"])
    curves = {pid: c for pid, c in all_curves.items() if pid not in bad}
    solve_steps = []
    for c in curves.values():
        hit = moving_average_solved(c["returns"], SOLVED_RETURN[TASK])
        solve_steps.append(c["end-steps"][hit] if hit is not None else None)
    rows = run["metrics"]
    out = {
        "final-100": own_env_final(all_curves, bad),
        "solved": sum(s is not None for s in solve_steps), "honest": len(curves), "solve-steps": solve_steps,
        "flops": sum(c["act-flops"] + c["train-flops"] for c in all_curves.values())
        + (rows[-1].get("server-train-flops", 0) if rows else 0),
        "uplink-mb": rows[-1]["uplink-bytes-total"] / 1e6 if rows else 0.0,
        "global-nominal": rows[-1].get("return") if rows else None,
        "global-own-envs": rows[-1].get("return-envs", rows[-1].get("return")) if rows else None,
        "late-dips": late_dips(run),
    }
    final = run.get("final-greedy")
    if final:
        out["final-nominal"] = float(np.mean(final["nominal"]))
        own = [final["own-envs"][str(p)] for p in range(run["n"]) if p not in bad] if "own-envs" in final else []
        out["final-own-envs"] = float(np.mean(own)) if own else out["final-nominal"]
    trusted = [r for r in rows if "trust-weights" in r]
    if trusted and bad:
        shares = [w for w in faulty_weight_per_round(run)[1] if not np.isnan(w)]
        out["faulty-weight"] = float(np.mean(shares)) if shares else None
        out["batches-refused"] = sum(len(set(r.get("experience-refused-partitions", [])) & bad) for r in trusted)
    if trusted:
        out["admitted"] = (sum(r["experience-admitted"] for r in trusted)
                           / max(1, sum(r["experience-offered"] for r in trusted)))
    return out


def plot_trust(runs: list[dict], path: Path) -> None:
    """The faulty clients' trust weight per round (against 1/N), one line per condition and Fusion variant."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, run in enumerate(runs):
        rounds, weight = faulty_weight_per_round(run)
        ax.plot(rounds, weight, lw=0.9, color=f"C{i % 10}",
                ls="-" if run["method"] == "fusion" else ":", label=f"{settings_label(run)}, {run['condition']}")
    n = runs[0]["n"]
    ax.axhline(1 / n, color="grey", ls="--", lw=0.8, label="1/N")
    ax.set(xlabel="round", ylabel="trust weight of partition 0", ylim=(-0.02, 1.02),
           title=f"LunarLander, N = {n}: Fusion's weight on the faulty client (partition 0)")
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def report(command: str, out: Path = OUT, include: list[Path] = ()) -> str:
    """Table and plots from the runs saved in `out`, plus the saved runs named in `include` (e.g. a clean row
    that another sweep measured), written to `out`."""
    runs, seen = [], {}
    for path in [*sorted(out.glob("*.json")), *include]:
        run = json.loads(path.read_text())
        key = (run["method"], run["condition"], run["n"], run["seed"], json.dumps(run.get("overrides"), sort_keys=True))
        if key in seen:
            raise SystemExit(f"{path} is the same run as {seen[key]} ({run['method']}, {run['condition']}, "
                             f"N = {run['n']}, seed {run['seed']}): report it once")
        seen[key] = path
        runs.append(run)
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        run.setdefault("train-frequency", 4)  # runs saved before the key existed: the default was 4 then
        run.setdefault("n-step", 1)  # likewise: 1-step targets until 2026-12-03
        key = (run["n"], run["condition"], run["method"], run["train-frequency"], run["n-step"], settings_label(run))
        groups.setdefault(key, []).append(run)
    attacks = any(faulty(k[1]) for k in groups)  # the share-of-clean column only where there is an attack
    lines = [f"LunarLander-v3, Double DQN clients, env reward, solved = 100-episode mean ≥ 200; one faulty client of N "
             f"(partition 0) under the attacks. Command: `{command}`", "",
             "| N | condition | method | env steps per gradient step | n-step | seeds | honest clients' final 100-ep return (own env) "
             + ("| of the clean run's (same partitions and seed) " if attacks else "") + "| honest clients solved "
             "| env steps to solve | late dips: honest client-rounds below 100, last 40% of rounds "
             "| global greedy return, nominal | global greedy return, clients' envs "
             f"| final model, {FINAL_EPISODES} greedy episodes, nominal | the same, honest clients' envs "
             "| faulty client's trust weight (1/N = fair) | its batches refused | shared transitions admitted "
             "| FLOPs | uplink MB |", "|---" * (19 + attacks) + "|"]
    order = {c: i for i, c in enumerate(CONDITIONS)}
    clean = {(r["n"], settings_label(r), r["seed"], r["train-frequency"], r["n-step"]): r for r in runs if r["condition"] == "none"}
    for (n, condition, method, tf, n_step, label), seed_runs in sorted(
            groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99), list(METHODS).index(kv[0][2]), *kv[0][3:])):
        s = [summarise(r) for r in seed_runs]
        col = {k: [x.get(k) for x in s] for k in dict.fromkeys(k for x in s for k in x)}
        kept = [share_of_clean(r, clean.get((n, label, r["seed"], tf, n_step))) for r in seed_runs] if faulty(condition) else []
        share = f"| {seeds_cell(kept, '.1%')} "
        lines.append(
            f"| {n} | {condition} | {label} | {tf} | {n_step} | {len(s)} | {fmt(col['final-100'], '.1f', 'n/a')} "
            + (share if attacks else "") +
            f"| {sum(col['solved'])} of {sum(col['honest'])} | {fmt(sum(col['solve-steps'], []), '.3g')} "
            f"| {dips_cell(col['late-dips'])} "
            f"| {fmt(col['global-nominal'], '.1f', 'n/a')} | {fmt(col['global-own-envs'], '.1f', 'n/a')} "
            f"| {seeds_cell(col.get('final-nominal', []))} | {seeds_cell(col.get('final-own-envs', []))} "
            f"| {fmt(col.get('faulty-weight', [None]), '.3f', '-')} | {fmt(col.get('batches-refused', [None]), '.0f', '-')} "
            f"| {fmt(col.get('admitted', [None]), '.1%', '-')} | {fmt(col['flops'], '.3g')} | {fmt(col['uplink-mb'], '.1f')} |")
    lines += ["", "Final return: the honest clients' own episodes (each on its own environment), last 100 per client, "
              "mean over clients, then mean ± std over seeds. "
              + ("Of the clean run's: per seed, that return over the same partitions' return in the clean run of the "
                 "same method and seed, then mean ± std over seeds ('-' where that clean run is missing or ends ≤ 0). "
                 if attacks else "")
              + "Global greedy return: the server's evaluation of the "
              "global network in the last round (5 episodes: in runs saved before 2026-12-07 the same 5 start states "
              "every round, since then other ones each round) on the nominal environment, and the mean over the "
              "clients' variants (same as nominal when every client is nominal)"
              + (": for runs with `fusion-deploy = \"average\"`, the run's model, the trust-weighted mix before the "
                 "server learner's steps (the sent network is judged in the last table)"
                 if any(judges_sent_network(r) for r in runs) else "")
              + f". Final model: the run's model after the last round on {FINAL_EPISODES} greedy episodes (start states "
              f"{FINAL_SEED}…, the same for every run), on the nominal environment and averaged over the honest "
              "clients' environments ('-': runs saved before 2026-12-07, not measured)."
              " Late dips: over the last 40% of the rounds, the honest clients' rounds whose finished episodes average "
              "below 100 (half the solve bar), of all their rounds with a finished episode, all seeds together."
              " Trust weight: mean over rounds of partition 0's share of the aggregation weight."]
    lines += gap_lines(runs, clean)
    lines += deployed_lines(runs)
    for n in sorted({k[0] for k in groups}):
        for condition in CONDITIONS:
            here = {k: g for k, g in groups.items() if k[0] == n and k[1] == condition}
            several = len({k[3:5] for k in here}) > 1  # runs of other settings: say which in the legend
            at = {(f"{k[5]} (tf {k[3]}, n-step {k[4]})" if several else k[5]): g for k, g in here.items()}
            if at:
                plot_returns(at, n, out / f"returns-{condition}-n{n}.png", title=f"condition {condition}")
        trust_runs = [g[0] for (nn, c, m, *_), g in sorted(groups.items()) if nn == n and m.startswith("fusion") and faulty(c)]
        if trust_runs:
            plot_trust(trust_runs, out / f"trust-n{n}.png")
    return write_table(lines, out)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--steps-per-round", type=int, default=1000)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra run-config overrides for every run (e.g. dqn-train-frequency=1)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--include", nargs="*", type=Path, default=[], metavar="RUN.json",
                        help="saved runs from other folders to report beside this folder's (e.g. the clean row)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    extra = run_config_overrides(args.set)
    command = command_line("benchmarks.rl_heterogeneity", args.command)
    if not args.report_only:
        n = args.clients
        for seed in args.seeds:
            for condition in args.conditions:
                for method in args.methods:
                    if not applies(method, condition):
                        continue
                    spec = dict(METHODS[method])
                    attack = CONDITIONS[condition]
                    overrides = {**AGENT, **{k: v for k, v in spec.items() if k != "local"}, **attack, **extra,
                                 "task": TASK, "num-server-rounds": args.rounds, "steps-per-round": args.steps_per_round,
                                 "seed": seed, "wandb-mode": "disabled", "fraction-evaluate": 0.0}
                    if "byzantine-attack" in attack:
                        overrides["byzantine-fraction"] = 1.0 / n
                    t0 = time.time()
                    name = f"{method}-{condition}-n{n}-seed{seed}"
                    if spec.get("local"):
                        run = {"metrics": [], "clients": run_local(overrides, args.rounds, n, seed)}
                    else:
                        with tempfile.TemporaryDirectory() as scratch:
                            metrics, clients = run_app(overrides, n, Path(scratch), out / f"{name}.log")
                            (last,) = (Path(scratch) / "outputs").glob(f"*/{LAST_CHECKPOINT}")
                            run = {"metrics": metrics, "clients": clients, "final-greedy": final_greedy(last.parent, n)}
                    config = RunConfig.from_run_config(overrides).as_dict()
                    run.update({"method": method, "condition": condition, "n": n, "seed": seed,
                                "wall-s": time.time() - t0, "steps-per-round": args.steps_per_round,
                                "rounds": args.rounds, "overrides": overrides, "config": config,
                                "train-frequency": config["dqn-train-frequency"], "n-step": config["dqn-n-step"],
                                # the server's 5 evaluation episodes: other start states each round since 2026-12-07
                                # (a run saved before that without this key replayed the same 5 every round)
                                "server-eval-start-states": "per-round"})
                    (out / f"{name}.json").write_text(json.dumps(run))
                    print(f"{name}: {time.time() - t0:.0f}s, {summarise(run)['final-100']}", flush=True)
    print(report(command, out, args.include))


if __name__ == "__main__":
    main()
