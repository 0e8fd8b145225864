"""Federated DQN on LunarLander-v3: Local vs FedAvg vs Fusion, DQN and Double DQN, N clients, several seeds.

    python -m benchmarks.lunarlander                                  # the full sweep (hours on 2 cores)
    python -m benchmarks.lunarlander --clients 3 --seeds 1 --rounds 20 --methods fusion-double local-double
    python -m benchmarks.lunarlander --report-only

Local agents run in-process with the same agent and rollout code as the ClientApp
(`fedrl_app.client.dqn`, `fedrl_app.tasks.gym_rl`), for the same per-client step budget;
federated methods go through `flwr run`. A client "solves" when the 100-episode moving
average of its own episode returns reaches 200 (the environment's reward, no shaping);
we record the episode and the env step at which that happens. Results land in
benchmarks/results/lunarlander/ (per-run JSON, table.md, returns-n<N>.png for the six
main methods, ablations-n<N>.png for Fusion Double beside every other method).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import ROOT, benchmark_parser, command_line, fmt, run_app, save_figure, write_table  # noqa: E402
from fedrl_app.agents.dqn import DQNAgent  # noqa: E402
from fedrl_app.config import RunConfig  # noqa: E402
from fedrl_app.reporting.plots import episode_ends  # noqa: E402
from fedrl_app.tasks.gym_rl import (  # noqa: E402
    SOLVED_RETURN,
    env_dims,
    evaluate_policy,
    moving_average_solved,
    run_steps,
)

OUT = ROOT / "benchmarks" / "results" / "lunarlander"
TASK = "lunarlander"
# The table was measured before three defaults changed (train frequency, n-step, Fusion's trust and
# filter); these keep its runs reproducible:
TF4 = {"dqn-train-frequency": 4, "dqn-n-step": 1}  # one gradient step per 4 env steps (the default is 1 now)
FIRST_FUSION = {"trust": "param-cosine", "diversity-space": "raw"}  # Fusion as first built (see rl_heterogeneity)
METHODS = {
    "local-dqn": {**TF4, "agent": "dqn", "local": True},
    "local-double": {**TF4, "agent": "double", "local": True},
    "fedavg-dqn": {**TF4, "agent": "dqn", "strategy": "fedavg"},
    "fedavg-double": {**TF4, "agent": "double", "strategy": "fedavg"},
    "fusion-dqn": {**TF4, "agent": "dqn", "strategy": "fusion", **FIRST_FUSION},
    "fusion-double": {**TF4, "agent": "double", "strategy": "fusion", **FIRST_FUSION},
    "fusion-double-nofilter": {**TF4, "agent": "double", "strategy": "fusion", **FIRST_FUSION, "diversity-filter": False},
    # θ = 0.15 admits every LunarLander transition (the mean distance to 16 buffer states is ≥ 0.76 even
    # for a random policy's states); θ = 1.3 is about their 25th percentile, a filter that actually filters
    "fusion-double-theta1.3": {**TF4, "agent": "double", "strategy": "fusion", **FIRST_FUSION, "diversity-threshold": 1.3},
    # no dual learning: the server only mixes (α·θ_global + (1 − α)·trust-weighted clients); the shared
    # experience is still uploaded but nothing learns from it. Isolates what the learning server adds.
    "fusion-double-noserver": {**TF4, "agent": "double", "strategy": "fusion", **FIRST_FUSION, "server-updates-per-round": 0},
    # the server learns on only the newest 10k shared transitions (default 50k): tests whether the global
    # network's mid-run collapse comes from learning on stale ε-random experience (the TD loss drops and the
    # greedy return recovers when a full 50k buffer starts to overwrite it). Measured: a shallower dip, but
    # worse clients (README)
    "fusion-double-buf10k": {**TF4, "agent": "double", "strategy": "fusion", **FIRST_FUSION, "server-buffer-size": 10_000},
    # one gradient step per env step (the defaults take one per 4): 4× the updates and ~4× the compute
    "local-double-tf1": {"agent": "double", "local": True, "dqn-train-frequency": 1, "dqn-n-step": 1},
    "fedavg-double-tf1": {"agent": "double", "strategy": "fedavg", "dqn-train-frequency": 1, "dqn-n-step": 1},
    "fusion-double-tf1": {"agent": "double", "strategy": "fusion", **FIRST_FUSION, "dqn-train-frequency": 1, "dqn-n-step": 1},
}

# the published comparison; every other method is a variant (an ablation of fusion-double, or -tf1), plotted apart
MAIN_METHODS = ("local-dqn", "local-double", "fedavg-dqn", "fedavg-double", "fusion-dqn", "fusion-double")


def client_curves(clients_rows: list[dict]) -> dict[int, dict]:
    """Per partition: episode returns in order, the env step at which each episode ended, steps and FLOPs."""
    curves: dict[int, dict] = {}
    for pid in sorted({r["partition_id"] for r in clients_rows}):
        rows = [r for r in clients_rows if r["partition_id"] == pid]
        ends, returns = episode_ends(rows)
        curves[pid] = {"returns": returns, "end-steps": ends, "steps": sum(r["env_steps"] for r in rows),
                       "act-flops": sum(r["act_flops"] for r in rows),
                       "train-flops": sum(r["train_flops"] for r in rows)}
    return curves


def run_local(overrides: dict, rounds: int, clients: int, seed: int) -> list[dict]:
    """Each of `clients` agents trains alone, on its own `env-variation` dynamics, for rounds × steps-per-round
    steps; rows shaped like clients.jsonl."""
    cfg = RunConfig.from_run_config({k: v for k, v in overrides.items() if k != "local"} | {"task": TASK, "seed": seed})
    torch.set_num_threads(1)  # as a ClientApp in a one-CPU Ray actor (OMP_NUM_THREADS=1): the same compute per agent
    rows = []
    for pid in range(clients):
        agent = DQNAgent(*env_dims(TASK), cfg.dqn_config(), seed=cfg.seed * 1_000 + pid)
        for r in range(1, rounds + 1):
            act0, train0 = agent.act_flops, agent.train_flops
            stats = run_steps(agent, TASK, key=("local", seed, pid, cfg.env_variation), seed=cfg.seed * 1_000 + pid,
                              steps=cfg.steps_per_round, env_params=cfg.env_params(pid))
            # the agent's own network, judged as the server judges the global one: greedy, the same start states
            greedy = evaluate_policy(agent.q, TASK, cfg.eval_episodes, seed=10_000 + cfg.seed)
            rows.append({"round": r, "partition_id": pid, "episode_returns": stats.episode_returns,
                         "episode_lengths": stats.episode_lengths, "env_steps": stats.env_steps,
                         "act_flops": agent.act_flops - act0, "train_flops": agent.train_flops - train0,
                         "bytes_sent": 0, "greedy_return": float(np.mean(greedy))})
    return rows


def summarise(run: dict) -> dict:
    curves = client_curves(run["clients"])
    solve_episodes, solve_steps, final = [], [], []
    for c in curves.values():
        hit = moving_average_solved(c["returns"], SOLVED_RETURN[TASK])
        solve_episodes.append(hit + 1 if hit is not None else None)
        solve_steps.append(c["end-steps"][hit] if hit is not None else None)
        final.append(float(np.mean(c["returns"][-100:])) if c["returns"] else None)
    episodes = sum(len(c["returns"]) for c in curves.values())
    # The federation has solved when its slowest client has; clients step in lockstep (the same steps per
    # round), so by then all N together took N × that many steps and finished the episodes that ended by then.
    federation_step = max(solve_steps) if solve_steps and all(x is not None for x in solve_steps) else None
    flops = sum(c["act-flops"] + c["train-flops"] for c in curves.values())
    rows = run["metrics"]
    return {
        "clients-solved": sum(x is not None for x in solve_steps),
        "final-100": statistics.mean(x for x in final if x is not None) if any(x is not None for x in final) else None,
        # per client (None where it never solved), so the table can say how many of all clients got there
        "solve-episode": solve_episodes,
        "solve-steps-per-client": solve_steps,
        "env-steps-total": sum(c["steps"] for c in curves.values()),
        "solve-steps-total": len(curves) * federation_step if federation_step is not None else None,
        "solve-episodes-total": (sum(sum(1 for e in c["end-steps"] if e <= federation_step) for c in curves.values())
                                 if federation_step is not None else None),
        "flops-per-episode": flops / episodes if episodes else None,
        "flops-total": flops + (rows[-1].get("server-train-flops", 0) if rows else 0),
        "uplink-mb": rows[-1]["uplink-bytes-total"] / 1e6 if rows else 0.0,
        "downlink-mb": rows[-1]["downlink-bytes-total"] / 1e6 if rows else 0.0,
        **greedy_summary(run),
    }


def greedy_summary(run: dict) -> dict:
    """The greedy network's last-round return and env steps per client until it reaches the target: the global
    network for federated runs; for local runs each agent's own network (a list, one entry per agent)."""
    steps_per_round = run.get("steps-per-round", 1000)  # runs saved before the key existed used 1000
    if run["metrics"]:
        rows = run["metrics"]
        return {"greedy-return": [rows[-1].get("return")], "greedy-solve-steps": [server_solve_steps(rows, steps_per_round)]}
    agents = {}
    for row in run["clients"]:
        if "greedy_return" in row:
            agents.setdefault(row["partition_id"], []).append({"round": row["round"], "return": row["greedy_return"]})
    agents = {pid: sorted(rows, key=lambda r: r["round"]) for pid, rows in agents.items()}
    return {"greedy-return": [rows[-1]["return"] for rows in agents.values()],
            "greedy-solve-steps": [server_solve_steps(rows, steps_per_round) for rows in agents.values()]}


SERVER_WINDOW = 5  # rounds of server evaluation (each `eval-episodes` greedy episodes) in its moving average


def server_solve_steps(rows: list[dict], steps_per_round: int | None) -> int | None:
    """Env steps per client by the end of the first round at which the global network's greedy return,
    averaged over the last SERVER_WINDOW rounds' evaluations, reaches the target; None if never."""
    evaluated = [r for r in rows if r.get("return") is not None and r["round"] > 0]
    hit = moving_average_solved([r["return"] for r in evaluated], SOLVED_RETURN[TASK], SERVER_WINDOW)
    return evaluated[hit]["round"] * steps_per_round if hit is not None and steps_per_round else None


def mean_return_curve(run: dict, grid: np.ndarray, window: int = 20) -> np.ndarray:
    """The clients' `window`-episode moving-average return at each env step of `grid` (per client), averaged
    over clients; NaN where a client has not finished `window` episodes yet."""
    per_client = []
    for c in client_curves(run["clients"]).values():
        if len(c["returns"]) < window:
            continue
        ma = np.convolve(c["returns"], np.ones(window) / window, mode="valid")
        ends = np.asarray(c["end-steps"][window - 1:])
        idx = np.searchsorted(ends, grid, side="right") - 1  # the latest average known at each grid step
        per_client.append(np.where(idx >= 0, ma[np.maximum(idx, 0)], np.nan))
    if not per_client:
        return np.full(len(grid), np.nan)
    with warnings.catch_warnings():  # columns before any client's first average are all NaN, and stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(per_client, axis=0)


def greedy_curve(run: dict) -> list[float]:
    """Greedy return per round (index = round): the global network's, or the mean over local agents of their own
    (no round-0 evaluation for those); empty if the run has no greedy evaluation."""
    if run["metrics"]:
        return [m.get("return", np.nan) for m in run["metrics"]]
    per_round: dict[int, list[float]] = {}
    for row in run["clients"]:
        if "greedy_return" in row:
            per_round.setdefault(row["round"], []).append(row["greedy_return"])
    return [np.nan] + [float(np.mean(per_round[r])) for r in sorted(per_round)] if per_round else []


def plot_returns(runs: dict[str, list[dict]], n: int, path: Path, title: str = "clients' own episodes") -> None:
    """Left: clients' moving-average return vs env steps per client; right: the server's greedy evaluation
    per round. Mean over seeds, shaded ± one std."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (method, seed_runs) in enumerate(sorted(runs.items())):
        budget = max(sum(r["env_steps"] for r in run["clients"] if r["partition_id"] == 0) for run in seed_runs)
        grid = np.linspace(0, budget, 101)[1:]
        curves = np.array([mean_return_curve(run, grid) for run in seed_runs])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, std = np.nanmean(curves, axis=0), np.nanstd(curves, axis=0)
        ax1.plot(grid, mean, color=f"C{i}", lw=1.2, label=f"{method}, {len(seed_runs)} seed{'s' * (len(seed_runs) > 1)}")
        ax1.fill_between(grid, mean - std, mean + std, color=f"C{i}", alpha=0.15)
        evaluated = [curve for curve in map(greedy_curve, seed_runs) if curve]
        if evaluated:
            length = min(map(len, evaluated))
            server = np.array([e[:length] for e in evaluated])
            ax2.plot(range(length), server.mean(axis=0), color=f"C{i}", lw=1.0, label=method)
            ax2.fill_between(range(length), server.mean(axis=0) - server.std(axis=0),
                             server.mean(axis=0) + server.std(axis=0), color=f"C{i}", alpha=0.12)
    for ax in (ax1, ax2):
        ax.axhline(SOLVED_RETURN[TASK], color="grey", ls="--", lw=0.8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax1.set(xlabel="env steps per client", ylabel="clients' 20-episode moving-average return",
            title=f"LunarLander-v3, N = {n}: {title}")
    ax2.set(xlabel="round", ylabel="greedy return (5 episodes)", ylim=(-600, 320),
            title=f"N = {n}: global network (local: mean of the agents' own)")
    save_figure(fig, path)


def fusion_summary(run: dict) -> dict:
    """The global buffer's intake: share of offered transitions admitted (all rounds), buffer size at the end,
    and gzip's saving on the shared experience."""
    rows = [r for r in run["metrics"] if "experience-offered" in r]
    offered = sum(r["experience-offered"] for r in rows)
    raw = sum(r.get("experience-raw-bytes", 0) for r in rows)
    return {"admitted": sum(r["experience-admitted"] for r in rows) / offered if offered else None,
            "admitted-last": rows[-1]["filter-acceptance"] if rows else None,
            "buffer": rows[-1]["global-buffer-size"] if rows else None,
            "gzip-ratio": sum(r.get("experience-gzip-bytes", 0) for r in rows) / raw if raw else None}


def report(command: str, out: Path = OUT) -> str:
    runs: dict[str, list[dict]] = {}
    for path in sorted(out.glob("*.json")):
        run = json.loads(path.read_text())
        runs.setdefault(f"{run['method']} N={run['n']}", []).append(run)
    lines = [f"LunarLander-v3, env reward, solved = 100-episode moving average ≥ 200. Command: `{command}`", "",
             "| method | seeds | clients solved | final 100-ep return | episodes to solve (per client) | "
             "env steps to solve (per client) | episodes to solve (all clients) | env steps to solve (all clients) | "
             "env steps run (all clients) | FLOPs / episode | FLOPs total | uplink MB | downlink MB | "
             "greedy return, last round | env steps per client until the greedy return ≥ 200 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    greedy = {name: any(greedy_summary(r)["greedy-return"] for r in seed_runs) for name, seed_runs in runs.items()}
    for name, seed_runs in sorted(runs.items(), key=lambda kv: (kv[1][0]["n"], kv[0])):
        sums = [summarise(r) for r in seed_runs]
        col = {k: [s[k] for s in sums] for k in sums[0]}
        n = seed_runs[0]["n"]
        lines.append(f"| {name} | {len(sums)} | {fmt(col['clients-solved'], '.1f')} of {n} "
                     f"| {fmt(col['final-100'], '.1f', 'n/a')} | {fmt(sum(col['solve-episode'], []), '.0f')} "
                     f"| {fmt(sum(col['solve-steps-per-client'], []), '.3g')} | {fmt(col['solve-episodes-total'], '.0f')} "
                     f"| {fmt(col['solve-steps-total'], '.3g')} | {fmt(col['env-steps-total'], '.3g')} "
                     f"| {fmt(col['flops-per-episode'], '.3g', 'n/a')} | {fmt(col['flops-total'], '.3g')} "
                     f"| {fmt(col['uplink-mb'], '.1f')} | {fmt(col['downlink-mb'], '.1f')} "
                     f"| {fmt(sum(col['greedy-return'], []), '.1f', 'n/a')} "
                     f"| {fmt(sum(col['greedy-solve-steps'], []), '.3g', 'not reached' if greedy[name] else 'n/a')} |")
    lines += ["", "Greedy columns: for federated methods the server's evaluation of the global network (5 greedy "
              "episodes from the same start states every round); for local ones each agent's own network, evaluated "
              "the same way after every round's steps, one value per agent (so 'not reached' counts agents). "
              "'Until ≥ 200' is the first round at which the mean of the last 5 rounds' evaluations reaches 200. "
              "The per-client 'to solve' columns pool the clients of all seeds: mean ± std over those that solved, "
              "and how many of them did not. The 'all clients' columns need every client of a run to solve.",
              "", "Fusion's global replay buffer (diversity filter: admit a shared transition if the mean L2 distance "
              "of its state to 16 buffer states is ≥ θ):", "",
              "| method | seeds | θ | transitions admitted (all rounds) | admitted, last round | buffer at the end "
              "| shared experience, gzip / raw bytes |", "|---|---|---|---|---|---|---|"]
    for name, seed_runs in sorted(runs.items(), key=lambda kv: (kv[1][0]["n"], kv[0])):
        if not seed_runs[0]["method"].startswith("fusion"):
            continue
        spec = METHODS.get(seed_runs[0]["method"], {})
        theta = "off" if spec.get("diversity-filter") is False else spec.get("diversity-threshold", RunConfig().diversity_threshold)
        f = [fusion_summary(r) for r in seed_runs]
        lines.append(f"| {name} | {len(f)} | {theta} | {fmt([x['admitted'] for x in f], '.1%', 'n/a')} "
                     f"| {fmt([x['admitted-last'] for x in f], '.1%', 'n/a')} | {fmt([x['buffer'] for x in f], '.0f', 'n/a')} "
                     f"| {fmt([x['gzip-ratio'] for x in f], '.2f', 'n/a')} |")
    for n in sorted({r[0]["n"] for r in runs.values()}):
        at_n = {name.split(" ")[0]: r for name, r in runs.items() if r[0]["n"] == n}
        plot_returns({m: r for m, r in at_n.items() if m in MAIN_METHODS}, n, out / f"returns-n{n}.png")
        ablations = {m: r for m, r in at_n.items() if m not in MAIN_METHODS or m == "fusion-double"}
        if len(ablations) > 1:
            plot_returns(ablations, n, out / f"ablations-n{n}.png", title="Fusion Double and the variant runs")
    return write_table(lines, out)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--clients", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--steps-per-round", type=int, default=1000)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--out", type=Path, default=OUT, help="results directory")
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    command = command_line("benchmarks.lunarlander", args.command)
    if not args.report_only:
        for seed in args.seeds:
            local_rows: dict[str, list[dict]] = {}
            for n in args.clients:
                for method in args.methods:
                    spec = dict(METHODS[method])
                    overrides = {**{k: v for k, v in spec.items() if k != "local"}, "task": TASK,
                                 "num-server-rounds": args.rounds, "steps-per-round": args.steps_per_round,
                                 "seed": seed, "wandb-mode": "disabled", "fraction-evaluate": 0.0}
                    t0 = time.time()
                    if spec.get("local"):
                        # Local agent k is seeded by (seed, k) alone, so the N = 3 agents are the first
                        # three of the N = 5 ones: train max(N) once per seed and take the first n.
                        if method not in local_rows:
                            local_rows[method] = run_local(overrides, args.rounds, max(args.clients), seed)
                        run = {"metrics": [], "clients": [r for r in local_rows[method] if r["partition_id"] < n]}
                    else:
                        with tempfile.TemporaryDirectory() as scratch:
                            metrics, clients = run_app(overrides, n, Path(scratch), out / f"{method}-n{n}-seed{seed}.log")
                        run = {"metrics": metrics, "clients": clients}
                    run.update({"method": method, "n": n, "seed": seed, "wall-s": time.time() - t0,
                                "steps-per-round": args.steps_per_round, "rounds": args.rounds})
                    (out / f"{method}-n{n}-seed{seed}.json").write_text(json.dumps(run))
                    print(f"{method} N={n} seed {seed}: {time.time() - t0:.0f}s", flush=True)
    print(report(command, out))


if __name__ == "__main__":
    main()
