"""Faults in simulation: a client that raises, one that never answers in time, the server killed and resumed."""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from benchmarks.common import ROOT, run_config_args
from fedrl_app.runtime.launch import CONNECTION, LocalSimulation, _pids_mentioning
from fedrl_app.server.recorder import read_jsonl

pytestmark = pytest.mark.e2e
NUM_SUPERNODES = 3

TINY = {"max-client-examples": 300, "local-test-fraction": 0.25, "eval-batch-size": 2000, "wandb-mode": "disabled"}


def _overrides(tmp_path, **kw) -> list[str]:
    config = {**TINY, "outputs-dir": str(tmp_path), **kw}
    return run_config_args(config)


def _rows(tmp_path):
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    return run_dir, read_jsonl(run_dir / "metrics.jsonl")


def test_a_client_that_raises_is_left_out_of_that_round_only(sim, tmp_path):
    result = sim.run(ROOT, _overrides(tmp_path, **{"num-server-rounds": 2, "fault-mode": "raise",
                                                     "fault-partition": 1, "fault-round": 1}), capture=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    _, rows = _rows(tmp_path)
    assert (rows[1]["clients-accepted"], rows[1]["clients-dropped"]) == (2, 1)
    assert (rows[2]["clients-accepted"], rows[2]["clients-dropped"]) == (3, 0)
    assert "injected fault: partition 1 raises in round 1" in result.stdout + result.stderr


def test_a_client_that_never_answers_is_timed_out(sim, tmp_path):
    # round 2: round 1 loads every client's data, which on a busy 2-core machine can itself outrun 15 s
    result = sim.run(ROOT, _overrides(tmp_path, **{"num-server-rounds": 3, "fault-mode": "hang", "fault-partition": 0,
                                                     "fault-round": 2, "fault-hang-s": 40.0, "round-timeout": 15.0}),
                     capture=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    _, rows = _rows(tmp_path)
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert rows[2]["clients-accepted"] == 2 and rows[2]["wall-s"] < 40  # the round did not wait for it


def test_server_killed_mid_run_resumes_without_losing_rounds(tmp_path):
    with LocalSimulation(num_supernodes=2) as first:
        run = subprocess.Popen([shutil.which("flwr") or "flwr", "run", str(ROOT), CONNECTION, "--stream",
                                "--run-config", *_overrides(tmp_path, **{"num-server-rounds": 6})],
                               env=first.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 240
        rows: list = []
        while time.time() < deadline:
            runs = [p for p in tmp_path.iterdir() if p.is_dir()]
            rows = read_jsonl(runs[0] / "metrics.jsonl") if runs else []
            if len(rows) >= 3:  # rounds 0, 1, 2 written (and checkpointed)
                break
            time.sleep(0.5)
        assert len(rows) >= 3, "the run never reached round 2"
        for pid in _pids_mentioning(f"127.0.0.1:{first.port}"):  # SIGKILL the ServerApp's process: a crash
            if b"flwr-simulation" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
    run.kill()
    run.wait()
    run_dir, rows = _rows(tmp_path)
    done = rows[-1]["round"]
    assert 2 <= done < 6
    with LocalSimulation(num_supernodes=2) as second:
        result = second.run(ROOT, _overrides(tmp_path, **{"num-server-rounds": 6, "resume-from": str(run_dir)}),
                            capture=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == list(range(7))  # nothing lost, nothing repeated
    assert rows[-1]["uplink-bytes-total"] == sum(r["uplink-bytes"] for r in rows)
