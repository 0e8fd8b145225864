"""Soak: a long MNIST run on a real deployment, one SuperNode killed and restarted every few rounds; memory sampled.

    python -m benchmarks.soak                          # 200 rounds, 10 SuperNodes, a restart every 20 rounds
    python -m benchmarks.soak --rounds 10 --restart-every 5 --supernodes 3   # a quick trial
    python -m benchmarks.soak --report-only

A `flower-superlink` with `--isolation subprocess` (it starts the ServerApp as a child process) and
N `flower-supernode`s (each starts a ClientApp process), every SuperNode with a `state-dir`, as in
a production deployment. After round k·`restart-every` the next SuperNode in turn is killed hard
and restarted 2 s later; it rejoins with its saved client state. Each process's resident memory
(VmRSS from /proc) is sampled every `--sample-s` seconds. Clients train on `max-client-examples`
examples per round and no client evaluation round (a small, fast round: the soak measures the
system, not the model; the server still evaluates the global model on the test set every round).

Reports: rounds lost (rounds missing from metrics.jsonl or aggregated from no client), rounds a
client was missing from, and RSS growth of the SuperLink, the ServerApp, the SuperNodes and
ClientApps between the first sample after `--growth-from` and the last one. Flower 1.41's
subprocess isolation starts one ClientApp process per message (`flwr/supernode/runtime/run_clientapp.py`),
so ClientApp RSS is that of the processes alive at the moment of a sample, not a growing one. Results:
benchmarks/results/soak/ (samples.jsonl, metrics.jsonl, table.md, rss.png).
"""

from __future__ import annotations

import json
import os
import statistics
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.common import ROOT, benchmark_parser, command_line, run_config_args, save_figure, write_jsonl, write_table  # noqa: E402,E501
from fedrl_app.runtime.deployment import LocalDeployment  # noqa: E402
from fedrl_app.runtime.launch import CONNECTION  # noqa: E402
from fedrl_app.server.recorder import read_jsonl  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "soak"
ROLES = ("superlink", "serverapp", "supernodes", "superexecs", "clientapps")


def descendants_rss(roots: set[int]) -> list[tuple[int, str, int]]:
    """(pid, command line, RSS bytes) of these processes and every live descendant, read from /proc (Flower's
    SuperExec starts the ServerApp and each ClientApp in sessions of their own, so process groups miss them)."""
    parent, info = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            parent[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])  # fields after "(comm)": state, ppid
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            rss = next((int(line.split()[1]) * 1024 for line in Path(f"/proc/{entry}/status").read_text().splitlines()
                        if line.startswith("VmRSS:")), 0)
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
        info[int(entry)] = (cmdline, rss)
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = [], [r for r in roots if r in info]
    while stack:
        pid = stack.pop()
        found.append((pid, *info[pid]))
        stack.extend(c for c in children.get(pid, []) if c in info)
    return found


def role_of(cmdline: str) -> str | None:
    """Which part of the deployment a process is, from its command line."""
    for needle, role in (("flwr-serverapp", "serverapp"), ("flwr-clientapp", "clientapps"),
                         ("flower-superlink", "superlink"), ("flower-supernode", "supernodes"),
                         ("flower-superexec", "superexecs")):
        if needle in cmdline:
            return role
    return None


def sample(deployment: LocalDeployment) -> dict[str, int]:
    """Total RSS per role, over the live processes of the deployment."""
    totals = dict.fromkeys(ROLES, 0)
    for _, cmdline, rss in descendants_rss({p.pid for p in deployment.processes if p.poll() is None}):
        role = role_of(cmdline)
        if role is not None:
            totals[role] += rss
    return totals


def soak(rounds: int, supernodes: int, restart_every: int, examples: int, sample_s: float, work: Path) -> tuple:
    """Run the soak; returns (samples, metrics rows, restarts, final run status)."""
    out = work / "outputs"
    out.mkdir(parents=True)
    config = {"num-server-rounds": rounds, "max-client-examples": examples, "local-test-fraction": 0.25,
              "eval-batch-size": 2000, "round-timeout": 60.0, "fraction-evaluate": 0.0, "wandb-mode": "disabled", "outputs-dir": str(out)}
    samples, restarts = [], []
    deployment = LocalDeployment(num_supernodes=supernodes, state_dir=work / "client-state")
    start = time.monotonic()
    with deployment:
        run = subprocess.Popen([shutil.which("flwr") or "flwr", "run", str(ROOT), CONNECTION, "--stream",
                                *[a for item in run_config_args(config) for a in ("--run-config", item)]],
                               env=deployment.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            next_restart, victim = restart_every, 0
            while run.poll() is None:
                runs = [p for p in out.iterdir() if p.is_dir()]
                done = read_jsonl(runs[0] / "metrics.jsonl")[-1]["round"] if runs and (
                    runs[0] / "metrics.jsonl").exists() and read_jsonl(runs[0] / "metrics.jsonl") else 0
                samples.append({"t": time.monotonic() - start, "round": done, **sample(deployment)})
                if done >= next_restart and next_restart < rounds:
                    deployment.kill_supernode(victim)
                    time.sleep(2)
                    deployment.restart_supernode(victim)
                    restarts.append({"after-round": done, "supernode": victim})
                    print(f"soak: SuperNode {victim} killed and restarted after round {done}", flush=True)
                    next_restart += restart_every
                    victim = (victim + 1) % supernodes
                time.sleep(sample_s)
        finally:
            if run.poll() is None:
                run.kill()
        status = deployment.last_run_status()
        rows = read_jsonl(next(p for p in out.iterdir() if p.is_dir()) / "metrics.jsonl")
    return samples, rows, restarts, status


WINDOW = 10  # rounds whose samples are pooled at each end of the growth measurement


def growth(samples: list[dict], role: str, from_round: int, statistic=statistics.median) -> tuple[float, float, float]:
    """(RSS MB over rounds [from_round, from_round + WINDOW), over the last WINDOW rounds, relative growth), each
    `statistic` of the samples in its window: a single sample catches a process mid-round or idle, a window does not."""
    later = [s for s in samples if s["round"] >= from_round and s[role] > 0]
    if not later:
        return float("nan"), float("nan"), float("nan")
    last_round = later[-1]["round"]
    early = [s[role] for s in later if s["round"] < from_round + WINDOW]
    late = [s[role] for s in later if s["round"] > last_round - WINDOW]
    first, last = statistic(early) / 2**20, statistic(late) / 2**20
    return first, last, (last - first) / first


def report(command: str, rounds: int, supernodes: int, growth_from: int) -> str:
    samples = read_jsonl(OUT / "samples.jsonl")
    rows = read_jsonl(OUT / "metrics.jsonl")
    meta = json.loads((OUT / "run.json").read_text())
    recorded = {r["round"] for r in rows if r["round"] == 0 or r.get("clients-accepted", 0) > 0}
    lost = [k for k in range(rounds + 1) if k not in recorded]
    short = [r["round"] for r in rows[1:] if r.get("clients-accepted", 0) < supernodes]
    lines = [f"{supernodes} SuperNodes, {rounds} MNIST rounds on a deployment SuperLink, one SuperNode killed and "
             f"restarted every {meta['restart-every']} rounds ({len(meta['restarts'])} restarts). "
             f"Command: `{command}`", "",
             f"- run status: `{meta['status']}`; wall time {meta['wall-s'] / 60:.1f} min",
             f"- rounds lost: **{len(lost)}** {lost if lost else ''}",
             f"- rounds with a client missing (a restart in flight): {len(short)} {short[:20]}",
             f"- final accuracy {rows[-1].get('accuracy', float('nan')):.4f}", "",
             f"| process | RSS, rounds {growth_from}–{growth_from + WINDOW - 1} (MB) | RSS, last {WINDOW} rounds (MB) "
             f"| growth |", "|---|---|---|---|"]
    for role in ROLES:
        if role == "clientapps":  # one process per message: how many are alive at a sample varies, so take the peak
            first, last, rel = growth(samples, role, growth_from, statistic=max)
            lines.append(f"| clientapps (peak of the per-message processes alive at once) | {first:.0f} | {last:.0f} "
                         f"| {rel:+.1%} |")
            continue
        first, last, rel = growth(samples, role, growth_from)
        lines.append(f"| {role} (median of the samples) | {first:.0f} | {last:.0f} | {rel:+.1%} |")
    figure, ax = plt.subplots(figsize=(7, 4))
    for role in ROLES:
        ax.plot([s["round"] for s in samples], [s[role] / 2**20 for s in samples], label=role)
    for r in meta["restarts"]:
        ax.axvline(r["after-round"], color="grey", lw=0.5, ls=":")
    ax.set_xlabel("round")
    ax.set_ylabel("resident memory (MB)")
    ax.set_title("soak: RSS per part of the deployment (dotted: a SuperNode restart)")
    ax.legend()
    save_figure(figure, OUT / "rss.png")
    return write_table(lines, OUT)


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--supernodes", type=int, default=10)
    parser.add_argument("--restart-every", type=int, default=20)
    parser.add_argument("--examples", type=int, default=600, help="max-client-examples")
    parser.add_argument("--sample-s", type=float, default=2.0)
    parser.add_argument("--growth-from", type=int, default=20, help="round from which RSS growth is measured")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    command = command_line("benchmarks.soak", args.command)
    if not args.report_only:
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="fedrl-soak-") as work:
            samples, rows, restarts, status = soak(args.rounds, args.supernodes, args.restart_every, args.examples,
                                                   args.sample_s, Path(work))
        write_jsonl(OUT / "samples.jsonl", samples)
        write_jsonl(OUT / "metrics.jsonl", rows)
        (OUT / "run.json").write_text(json.dumps({"status": status, "restarts": restarts, "wall-s":
                                                  time.monotonic() - start, "restart-every": args.restart_every}))
    print(report(command, args.rounds, args.supernodes, min(args.growth_from, args.rounds)))


if __name__ == "__main__":
    main()
