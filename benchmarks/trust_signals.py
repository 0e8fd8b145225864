"""Trust signals, offline: which faulty DQN agents does each of Fusion's client scores single out?

    python -m benchmarks.trust_signals                                   # LunarLander, N = 5, 30 rounds, seed 1
    python -m benchmarks.trust_signals --faults random-action reward-flip --seeds 1 2 3
    python -m benchmarks.trust_signals --faults random-action --oracle --seeds 1 2 3   # honest-only mean: the bound
    python -m benchmarks.trust_signals --report-only

A plain federation of N Double-DQN agents without Flower (the scores are pure functions of one
round's networks and buffer, so a minute of CPU answers what a 30-minute Fusion run would): each
round every agent starts from the global network, acts and learns for `--steps-per-round` env steps
(partition i runs `--faults[i]`, the rest are honest), and shares 256 of its transitions into a
pooled buffer (the server's buffer with the diversity filter off). Then both of Fusion's scores
(`strategies/fusion.py`) are computed on the round's networks:
- update-cosine: w_k ∝ max(0, cos(Δθ_k, coordinate-wise median Δθ));
- the TD probe (`trust-td-probe`): each network's median |TD error| e_k on 512 pooled
  transitions, factor min(1, median e / e_k);
and the next global network is the mean weighted by their product (Fusion's aggregation with α = 0,
no server learner, no norm scaling). Reported per kind of client: each score's mean over rounds and
the honest clients' own-episode return over the last 5 rounds. Results:
benchmarks/results/trust_signals/ (<faults>-seed<k>.json, table.md).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import ROOT, benchmark_parser, command_line, fmt, write_table
from fedrl_app.agents.dqn import DQNAgent, DQNConfig, ReplayBuffer
from fedrl_app.tasks.gym_rl import env_dims, evaluate_policy, run_steps
from strategies.fusion import network_td_errors, normalise_weights, td_trust_factors, update_trust

OUT = ROOT / "benchmarks" / "results" / "trust_signals"
TASK = "lunarlander"
SHARED_PER_ROUND = 256   # transitions each agent adds to the pooled buffer per round (Fusion's experience-sample)
PROBE = 512              # pooled transitions each network is scored on
LAST_ROUNDS = 5          # rounds the final return is averaged over
GREEDY_EPISODES = 3      # nominal-environment episodes each round's networks are scored on (a server-side score)


def run(faults: list[str], clients: int, rounds: int, steps_per_round: int, train_frequency: int, seed: int,
        oracle: bool = False) -> dict:
    """One federation; per round and client: cosine similarity, update-cosine weight, TD error, TD factor, return.

    `oracle`: the global network is the honest clients' plain mean (the faulty ones get weight 0), the bound
    on what any trust score could give this federation; the scores are still computed and logged.
    """
    torch.set_num_threads(1)
    kinds = [faults[i] if i < len(faults) else "" for i in range(clients)]
    obs_dim, n_actions = env_dims(TASK)
    config = replace(DQNConfig.for_agent("double"), train_frequency=train_frequency)
    agents = [DQNAgent(obs_dim, n_actions, config, seed=seed * 1_000 + i) for i in range(clients)]
    pooled = ReplayBuffer(rounds * clients * SHARED_PER_ROUND, obs_dim, seed=seed)
    names = list(agents[0].q.state_dict())
    global_net = {k: v.detach().numpy().copy() for k, v in agents[0].q.state_dict().items()}
    probe_net = DQNAgent(obs_dim, n_actions, config).q
    rng = np.random.default_rng(seed)
    flat = lambda d: np.concatenate([d[k].ravel() for k in names])  # noqa: E731
    history = []
    for r in range(1, rounds + 1):
        nets, returns, greedy = [], [], []
        for i, (agent, kind) in enumerate(zip(agents, kinds)):
            agent.q.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in global_net.items()})
            stats = run_steps(agent, TASK, key=("trust-signals", seed, i), seed=seed * 1_000 + i,
                              steps=steps_per_round, fault=kind)
            returns.append(float(np.mean(stats.episode_returns)) if stats.episode_returns else None)
            # the same episodes (seeds) for every network of the round: differences are the networks'
            greedy.append(float(np.mean(evaluate_policy(agent.q, TASK, GREEDY_EPISODES, seed=90_000 + 100 * seed + r))))
            nets.append({k: v.detach().numpy().copy() for k, v in agent.q.state_dict().items()})
            b = agent.buffer
            for j in rng.choice(b.size, min(SHARED_PER_ROUND, b.size), replace=False):
                pooled.add(b.obs[j], int(b.actions[j]), float(b.rewards[j]), b.next_obs[j], bool(b.dones[j]))
        weights, _, sims, _ = update_trust(flat(global_net), [flat(n) for n in nets])
        idx = rng.choice(pooled.size, min(PROBE, pooled.size), replace=False)
        batch = (pooled.obs[idx], pooled.actions[idx], pooled.rewards[idx], pooled.next_obs[idx], pooled.dones[idx])
        td = network_td_errors(probe_net, nets, batch, config.gamma)
        factors = td_trust_factors(td)
        combined, _ = normalise_weights(list(weights * factors))  # as Fusion combines them
        if oracle:
            combined, _ = normalise_weights([0.0 if kind else 1.0 for kind in kinds])
        global_net = {k: sum(w * n[k].astype(np.float64) for w, n in zip(combined, nets)).astype(np.float32)
                      for k in names}
        history.append({"round": r, "similarity": [float(s) for s in sims], "cosine-weight": weights.tolist(),
                        "td-error": td, "td-factor": factors.tolist(), "combined-weight": combined.tolist(),
                        "return": returns, "greedy-return": greedy})
        print(f"round {r}: cosine weights {np.round(weights, 3)}, TD factors {np.round(factors, 2)}", flush=True)
    return {"faults": kinds, "seed": seed, "clients": clients, "rounds": rounds, "steps-per-round": steps_per_round,
            "train-frequency": train_frequency, "oracle": oracle, "history": history}


def lowest_share(scores: list[float], members: list[int]) -> float:
    """The share of the round's lowest score held by `members` (ties split it evenly)."""
    lowest = [i for i, v in enumerate(scores) if v == min(scores)]
    return sum(i in members for i in lowest) / len(lowest)


def summarise(result: dict) -> dict[str, dict[str, float | None]]:
    """Per kind of client ('honest' pooled): mean over rounds and clients of each score; honest final return."""
    out: dict[str, dict[str, float]] = {}
    for kind in sorted(set(result["faults"])):
        members = [i for i, k in enumerate(result["faults"]) if k == kind]
        row = {key: float(np.mean([h[key][i] for h in result["history"] for i in members]))
               for key in ("cosine-weight", "td-factor", "combined-weight")}
        last = [h["return"][i] for h in result["history"][-LAST_ROUNDS:] for i in members if h["return"][i] is not None]
        row["return"] = float(np.mean(last)) if last else float("nan")
        scored = [h for h in result["history"] if "greedy-return" in h]  # runs saved before this score lack it
        row["greedy-return"] = (float(np.mean([h["greedy-return"][i] for h in scored[-LAST_ROUNDS:] for i in members]))
                                if scored else None)
        # how often one of this kind's networks scores the round's lowest greedy return (chance: 1/N each)
        row["ranked-last"] = float(np.mean([lowest_share(h["greedy-return"], members) for h in scored])) if scored else None
        out[kind or "honest"] = row
    return out


def report(command: str, out: Path = OUT) -> str:
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    groups: dict[tuple, list[dict]] = {}
    for res in results:
        groups.setdefault((tuple(res["faults"]), res["rounds"], res.get("oracle", False)), []).append(res)
    lines = [f"LunarLander-v3, Double DQN, N agents, plain federation weighted by Fusion's scores. Command: `{command}`",
             "", "| clients (partition order) | rounds | seeds | client | update-cosine weight | TD-probe factor "
             "| combined weight | own-episode return, last 5 rounds | network's greedy return, last 5 rounds "
             "| rounds its network scores lowest |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (faults, rounds, oracle), runs in sorted(groups.items()):
        summaries = [summarise(r) for r in runs]
        label = ", ".join(f or "honest" for f in faults) + (" (oracle: faulty weight 0)" if oracle else "")
        for kind in summaries[0]:
            col = {k: [s[kind][k] for s in summaries] for k in summaries[0][kind]}
            lines.append(f"| {label} | {rounds} | {len(runs)} | {kind} | {fmt(col['cosine-weight'])} "
                         f"| {fmt(col['td-factor'], '.2f')} | {fmt(col['combined-weight'])} | {fmt(col['return'], '.1f')} "
                         f"| {fmt(col['greedy-return'], '.1f', '-')} | {fmt(col['ranked-last'], '.2f', '-')} |")
    lines += ["", f"Weights are shares of the aggregation (1/N = {1 / runs[0]['clients']:.3f} is fair), mean over "
              "rounds and over the clients of a kind; factors are the TD probe's multiplier (1 = at or below the "
              "round's median TD error). Greedy return: each round's networks on the same "
              f"{GREEDY_EPISODES} nominal episodes (a score the server could compute itself); rounds scoring lowest: "
              "the share of rounds in which a network of that kind had the round's lowest greedy return (1/N by chance "
              "for one client). Mean ± std over seeds."]
    return write_table(lines, out)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--faults", nargs="*", default=["random-action", "reward-flip"],
                        choices=["random-action", "reward-flip"], help="faulty kinds of partitions 0, 1, ...")
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps-per-round", type=int, default=1000)
    parser.add_argument("--train-frequency", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--oracle", action="store_true",
                        help="aggregate the honest clients only (the bound on what trust can give)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if 2 * len(args.faults) >= args.clients:
        parser.error("the faulty clients must be a minority (the median update is the honest majority's)")
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for seed in args.seeds:
            result = run(args.faults, args.clients, args.rounds, args.steps_per_round, args.train_frequency, seed,
                         args.oracle)
            name = "-".join(f or "honest" for f in result["faults"]) + ("-oracle" if args.oracle else "")
            (OUT / f"{name}-seed{seed}.json").write_text(json.dumps(result))
    print(report(command_line("benchmarks.trust_signals", args.command)))


if __name__ == "__main__":
    main()
