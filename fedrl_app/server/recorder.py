"""The run recorder, shared by every strategy and task: metrics.jsonl, clients.jsonl, checkpoints, W&B, plots, resume."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from datetime import datetime
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, MetricRecord
from flwr.supercore import log

from fedrl_app.config import RunConfig
from fedrl_app.reporting.solve import SolveTracker
from fedrl_app.server.metered_grid import MeteredGrid
from strategies.wrapper import DeploysOtherModel

METRICS_FILE = "metrics.jsonl"
CLIENTS_FILE = "clients.jsonl"
LAST_CHECKPOINT = "last.pt"
BEST_MODEL = "best_model.pt"
BEST_INFO = "best.json"
RUN_INFO = "run.json"
SOLVED_FILE = "solved.json"  # RL: episode and env step at which each client solved


def new_run_dir(root: Path) -> Path:
    """outputs/<timestamp>/, suffixed -1, -2... if two runs start in the same second."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = root / stamp, 0
    while path.exists():
        n += 1
        path = root / f"{stamp}-{n}"
    path.mkdir(parents=True)
    return path


def resolve_resume_dir(resume_from: str, root: Path) -> Path:
    """A run directory with a last checkpoint; 'latest' picks the newest under `root`."""
    if resume_from == "latest":
        runs = sorted(p.parent for p in root.glob(f"*/{LAST_CHECKPOINT}"))
        if not runs:
            raise FileNotFoundError(f"config key 'resume-from' = 'latest', but no run under {root} has a checkpoint")
        return runs[-1]
    path = Path(resume_from).expanduser()
    if not (path / LAST_CHECKPOINT).is_file():
        raise FileNotFoundError(f"config key 'resume-from' = {resume_from!r}: no {LAST_CHECKPOINT} in that directory")
    return path


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """Read `last.pt` (tensors and plain numbers only: weights_only loading)."""
    return torch.load(run_dir / LAST_CHECKPOINT, weights_only=True)


def arrays_to_tensors(arrays: ArrayRecord) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v.numpy())) for k, v in arrays.items()}


class RunRecorder:
    """Everything the server does at the end of a round, in one place.

    Called through Flower's `evaluate_fn` after each round's training and client-side
    evaluation, it: evaluates centrally (via `evaluate`), appends a row to
    `metrics.jsonl` and the client reports to `clients.jsonl`, saves `last.pt` (model,
    strategy state, byte counters: enough to resume) and, when the tracked metric
    improves, `best_model.pt` + `best.json`; logs the same to W&B. `finish` draws the plots.
    """

    def __init__(self, cfg: RunConfig, run_dir: Path, strategy: Any, grid: MeteredGrid, evaluate, resume: dict | None = None) -> None:
        self.cfg, self.run_dir, self.strategy, self.grid, self.evaluate = cfg, run_dir, strategy, grid, evaluate
        self.round_offset = int(resume["round"]) if resume else 0
        self.best_value: float | None = resume.get("best-value") if resume else None
        self.uplink_total = int(resume["uplink-bytes-total"]) if resume else 0
        self.downlink_total = int(resume["downlink-bytes-total"]) if resume else 0
        self.elapsed_before = float(resume["elapsed-s"]) if resume else 0.0
        self.sim_time_s = float(resume.get("sim-time-s", 0.0)) if resume else 0.0  # the virtual clock, cumulative
        self._last_up = self._last_down = 0
        self._t_start = self._t_round = time.perf_counter()
        if resume:
            _truncate_jsonl(run_dir / METRICS_FILE, self.round_offset)
            _truncate_jsonl(run_dir / CLIENTS_FILE, self.round_offset)
        self.solves = SolveTracker(cfg.task) if cfg.is_rl else None
        if self.solves is not None and resume and (run_dir / CLIENTS_FILE).exists():
            for c in read_jsonl(run_dir / CLIENTS_FILE):  # the episodes before the stop still count
                self.solves.add(c["round"], c["partition_id"], c.get("episode_returns") or [],
                                c.get("episode_lengths") or [])
        info = {"config": cfg.as_dict(), "resumed-at-rounds": []}
        if (run_dir / RUN_INFO).exists():
            info = json.loads((run_dir / RUN_INFO).read_text())
        if resume:
            info["resumed-at-rounds"].append(self.round_offset)
        self.wandb_run = self._init_wandb(info)
        if self.wandb_run is not None:
            info["wandb-id"] = self.wandb_run.id
        (run_dir / RUN_INFO).write_text(json.dumps(info, indent=2))

    # --- W&B ------------------------------------------------------------------------
    def _init_wandb(self, info: dict):
        mode = os.environ.get("WANDB_MODE") or self.cfg.wandb_mode
        if mode == "disabled":
            return None
        try:
            import wandb

            return wandb.init(
                project=self.cfg.wandb_project, mode=mode, dir=str(self.run_dir), name=self.run_dir.name,
                config=self.cfg.as_dict(), id=info.get("wandb-id"), resume="allow", reinit="finish_previous",
            )
        except Exception as err:  # a dashboard must never take the run down
            log(ERROR, "W&B init failed in mode %r (%s); continuing without W&B. "
                "Use wandb-mode='offline' and `wandb sync` later.", mode, err)
            return None

    # --- per round ------------------------------------------------------------------
    def evaluate_fn(self, flower_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's `evaluate_fn`: central evaluation, then every per-round artefact."""
        server_round = flower_round + self.round_offset
        deployed = (self.strategy.deployed_arrays(arrays) if isinstance(self.strategy, DeploysOtherModel)
                    else arrays)
        metrics = self.evaluate(deployed, server_round)
        if deployed is not arrays:  # the network the clients start from is judged too, on the same episodes
            metrics.update({f"sent-{k}": v for k, v in self.evaluate(arrays, server_round).items()})
        if flower_round == 0 and self.round_offset > 0:
            return MetricRecord(metrics)  # the resumed round was recorded by the run before
        self.on_round_end(server_round, arrays, metrics, deployed)
        return MetricRecord(metrics)

    def on_round_end(self, server_round: int, arrays: ArrayRecord, metrics: dict[str, float],
                     deployed: ArrayRecord) -> None:
        """Record the round: `arrays` is the global model the clients get next (checkpointed in `last.pt`, what
        a resumed run continues from), `deployed` the run's model, the one `metrics` judge and `best_model.pt`
        holds: `arrays` itself, unless the strategy deploys another (`DeploysOtherModel`; then it is also saved
        beside the arrays in `last.pt`)."""
        now = time.perf_counter()
        up, down = self.grid.uplink_bytes - self._last_up, self.grid.downlink_bytes - self._last_down
        self._last_up, self._last_down = self.grid.uplink_bytes, self.grid.downlink_bytes
        self.uplink_total += up
        self.downlink_total += down
        round_log = self.strategy.rounds.get(server_round) if server_round else None
        row: dict[str, Any] = {
            "round": server_round,
            **metrics,
            "uplink-bytes": up,
            "downlink-bytes": down,
            "uplink-bytes-total": self.uplink_total,
            "downlink-bytes-total": self.downlink_total,
            "wall-s": now - self._t_round,
            "elapsed-s": self.elapsed_before + now - self._t_start,
        }
        if round_log is not None:
            row["clients-accepted"] = len(round_log.reports)
            row["clients-dropped"] = len(round_log.dropped)
            if round_log.dropped:
                row["drop-reasons"] = [why for _, why in round_log.dropped]
            row.update({f"train-{k}": v for k, v in round_log.train_metrics.items()})
            row.update({f"client-eval-{k}": v for k, v in round_log.evaluate_metrics.items()})
            row.update(round_log.extra)
            if "round-sim-time-s" in row:
                self.sim_time_s += float(row["round-sim-time-s"])
                row["sim-time-s"] = self.sim_time_s
        self._t_round = now
        reports = round_log.reports if round_log is not None else []
        if self.solves is not None:
            self._track_solves(server_round, reports, row)
            for name in ("experience_raw_bytes", "experience_gzip_bytes", "model_gzip_bytes"):
                values = [getattr(r.metadata, name) for r in reports if getattr(r.metadata, name) is not None]
                if values:  # gzip's saving, summed over this round's clients
                    row[name.replace("_", "-")] = int(sum(values))

        improved = self._is_better(metrics.get(self.cfg.tracked_metric))
        if improved:
            self.best_value = float(metrics[self.cfg.tracked_metric])
            torch.save(arrays_to_tensors(deployed), self.run_dir / BEST_MODEL)
            (self.run_dir / BEST_INFO).write_text(json.dumps(
                {"round": server_round, "metric": self.cfg.tracked_metric, "value": self.best_value,
                 "metrics": metrics, "config": self.cfg.as_dict()}, indent=2))
        self._save_last(server_round, arrays, deployed)

        with open(self.run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")
        if reports:
            with open(self.run_dir / CLIENTS_FILE, "a") as f:
                for r in reports:
                    f.write(json.dumps({"round": server_round, "node-id": r.node_id, **asdict(r.metadata),
                                        "metrics": r.metrics}) + "\n")
        shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        log(INFO, "fedrl round %d: %s uplink=%.2f MB downlink=%.2f MB%s", server_round, shown, up / 1e6,
            down / 1e6, " (best, checkpointed)" if improved else "")
        if self.wandb_run is not None:
            data = {k: v for k, v in row.items() if k != "round" and isinstance(v, (int, float))}
            for r in reports:
                prefix = f"clients/{r.metadata.partition_id}"
                data[f"{prefix}/train-time-s"] = r.metadata.train_time_s
                data[f"{prefix}/bytes-sent"] = r.metadata.bytes_sent
                if r.metadata.epoch_losses:
                    data[f"{prefix}/train-loss"] = r.metadata.epoch_losses[-1]
            self.wandb_run.log(data, step=server_round)

    def _track_solves(self, server_round: int, reports: list, row: dict[str, Any]) -> None:
        """Feed this round's finished episodes to the solve tracker; note solves in the row, log and solved.json."""
        for r in reports:
            meta = r.metadata
            solve = self.solves.add(server_round, meta.partition_id, meta.episode_returns or [],
                                    meta.episode_lengths or [])
            if solve is not None:
                log(INFO, "fedrl: client %d solved (100-episode mean ≥ %g) at its episode %d, env step %d, round %d",
                    solve.partition_id, self.solves.threshold, solve.episode, solve.env_step, server_round)
        row["clients-solved"] = len(self.solves.solves)
        (self.run_dir / SOLVED_FILE).write_text(json.dumps(self.solves.summary(), indent=2))

    def _is_better(self, value: float | None) -> bool:
        if value is None:
            return False
        if self.best_value is None:
            return True
        return value < self.best_value if self.cfg.tracked_metric == "loss" else value > self.best_value

    def _save_last(self, server_round: int, arrays: ArrayRecord, deployed: ArrayRecord) -> None:
        strategy_state = {
            name: {k: torch.from_numpy(np.array(v)) for k, v in group.items()}
            for name, group in self.strategy.state_dict().items()
        }
        checkpoint = {
            "round": server_round,
            "arrays": arrays_to_tensors(arrays),
            "strategy-state": strategy_state,
            "best-value": self.best_value,
            "uplink-bytes-total": self.uplink_total,
            "downlink-bytes-total": self.downlink_total,
            "elapsed-s": self.elapsed_before + time.perf_counter() - self._t_start,
            "sim-time-s": self.sim_time_s,
        }
        if deployed is not arrays:
            checkpoint["deployed-arrays"] = arrays_to_tensors(deployed)
        tmp = self.run_dir / (LAST_CHECKPOINT + ".tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, self.run_dir / LAST_CHECKPOINT)  # atomic: a crash never leaves half a file

    # --- end of run -----------------------------------------------------------------
    def finish(self) -> None:
        """Draw the plots, close W&B, say where everything is."""
        rows = read_jsonl(self.run_dir / METRICS_FILE)
        try:
            from fedrl_app.reporting.plots import plot_run

            plot_run(rows, self.run_dir, read_jsonl(self.run_dir / CLIENTS_FILE))
        except Exception as err:
            log(WARNING, "plotting failed: %s", err)
        if self.wandb_run is not None:
            self.wandb_run.finish()
            log(INFO, "W&B run stored under %s (offline runs: `wandb sync %s/wandb/offline-run-*`)",
                self.run_dir / "wandb", self.run_dir)
        best = json.loads((self.run_dir / BEST_INFO).read_text()) if (self.run_dir / BEST_INFO).exists() else {}
        log(INFO, "fedrl: results in %s (best %s=%s at round %s)", self.run_dir,
            self.cfg.tracked_metric, best.get("value"), best.get("round"))


def read_jsonl(path: Path) -> list[dict]:
    """All rows of a JSON-lines file (empty if it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _truncate_jsonl(path: Path, last_round: int) -> None:
    """Drop rows after the checkpointed round (written after the checkpoint a crash interrupted)."""
    rows = read_jsonl(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["round"] <= last_round))
