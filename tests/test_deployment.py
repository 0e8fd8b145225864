"""Deployment runtime: real SuperLink + SuperNodes on loopback, insecure and TLS + SuperNode auth, and a SuperNode crash."""

import json
import shutil
import subprocess
import time

import pytest

from benchmarks.common import ROOT, run_config_args
from fedrl_app.runtime.deployment import LocalDeployment
from fedrl_app.runtime.launch import CONNECTION, _pids_mentioning
from fedrl_app.server.recorder import read_jsonl

pytestmark = pytest.mark.e2e

TINY = {"max-client-examples": 300, "local-test-fraction": 0.25, "eval-batch-size": 2000, "wandb-mode": "disabled"}
CARTPOLE = {"task": "cartpole", "steps-per-round": 200, "dqn-hidden": 32, "dqn-learning-starts": 50,
            "dqn-batch-size": 32, "eval-episodes": 2, "fraction-evaluate": 0.0, "wandb-mode": "disabled"}


def _overrides(out, **kw) -> list[str]:
    return run_config_args({"outputs-dir": str(out), **kw})


def _run_dir(out):
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir


def _assert_all_stopped(deployment):
    assert all(p.poll() is not None for p in deployment.processes), "a SuperLink/SuperNode is still running"
    assert _pids_mentioning(f"127.0.0.1:{deployment.port}") == []


def test_insecure_deployment_runs_mnist_and_cartpole(tmp_path):
    deployment = LocalDeployment(num_supernodes=2)
    with deployment:
        for name, config, key in (("mnist", {**TINY, "num-server-rounds": 2}, "accuracy"),
                                  ("cartpole", {**CARTPOLE, "num-server-rounds": 2}, "return")):
            result = deployment.run(ROOT, _overrides(tmp_path / name, **config), capture=True, timeout=300)
            assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
            rows = read_jsonl(_run_dir(tmp_path / name) / "metrics.jsonl")
            assert [r["round"] for r in rows] == [0, 1, 2] and all(key in r for r in rows)
            assert rows[2]["clients-accepted"] == 2
            partitions = {c["partition_id"] for c in read_jsonl(_run_dir(tmp_path / name) / "clients.jsonl")}
            assert partitions == {0, 1}  # each SuperNode trained on its own node-config partition
    _assert_all_stopped(deployment)


def test_tls_deployment_with_supernode_authentication(tmp_path):
    deployment = LocalDeployment(num_supernodes=2, tls=True, auth=True)
    with deployment:
        assert "root-certificates" in (deployment.flwr_home / "config.toml").read_text()
        result = deployment.run(ROOT, _overrides(tmp_path, **{**TINY, "num-server-rounds": 1}), capture=True, timeout=300)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        rows = read_jsonl(_run_dir(tmp_path) / "metrics.jsonl")
        assert rows[-1]["round"] == 1 and rows[-1]["clients-accepted"] == 2
    _assert_all_stopped(deployment)


def test_supernode_killed_and_restarted_mid_run_continues_from_its_saved_state(tmp_path):
    state_dir = tmp_path / "client-state"
    deployment = LocalDeployment(num_supernodes=2, state_dir=state_dir)
    out = tmp_path / "outputs"
    out.mkdir()
    with deployment:
        run = subprocess.Popen([shutil.which("flwr") or "flwr", "run", str(ROOT), CONNECTION, "--stream",
                                "--run-config", *_overrides(out, **{**TINY, "num-server-rounds": 5,
                                                                    "round-timeout": 60.0})],
                               env=deployment.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 240
            while time.time() < deadline:
                runs = [p for p in out.iterdir() if p.is_dir()]
                if runs and len(read_jsonl(runs[0] / "metrics.jsonl")) >= 2:  # round 1 done
                    break
                time.sleep(0.5)
            deployment.kill_supernode(1)
            time.sleep(2)
            deployment.restart_supernode(1)
            run.wait(timeout=400)
        finally:
            run.kill()
        status = deployment.last_run_status()
    _assert_all_stopped(deployment)
    assert status == "finished:completed"
    rows = read_jsonl(_run_dir(out) / "metrics.jsonl")
    assert [r["round"] for r in rows] == list(range(6))  # every round ran and was recorded
    assert rows[-1]["clients-accepted"] == 2  # the restarted SuperNode is back in the federation
    assert min(r["clients-accepted"] for r in rows[1:]) < 2  # the crash did cost a round one client
    # the restarted client kept its loss history across the restart: one entry per round it trained in,
    # those before the crash included (a SuperNode that lost its state would hold only the later ones)
    from flwr.app import Context, RecordDict

    from fedrl_app.client.persistence import load_state
    trained = [c for c in read_jsonl(_run_dir(out) / "clients.jsonl") if c["partition_id"] == 1]
    context = Context(run_id=0, node_id=0, node_config={"partition-id": 1}, state=RecordDict(),
                      run_config=json.loads((_run_dir(out) / "run.json").read_text())["config"])
    assert load_state(context, state_dir / "node-1" / "partition-1.state")
    assert len(context.state["history"]["losses"]) == len(trained) >= 3


def test_deployment_killed_and_resumed_loses_no_round_and_no_client_state(tmp_path):
    """The SuperLink and every SuperNode die mid-run; a new deployment resumes the run from its checkpoint and
    each client from its state-dir."""
    from flwr.app import Context, RecordDict

    from fedrl_app.agents.dqn import DQNAgent
    from fedrl_app.client.dqn import AGENT_STATE_KEY
    from fedrl_app.client.persistence import load_state
    from fedrl_app.runtime.launch import stop_process_group

    state_dir, out = tmp_path / "client-state", tmp_path / "outputs"
    out.mkdir()
    config = {**CARTPOLE, "num-server-rounds": 4, "round-timeout": 60.0}
    first = LocalDeployment(num_supernodes=2, state_dir=state_dir)
    with first:
        run = subprocess.Popen([shutil.which("flwr") or "flwr", "run", str(ROOT), CONNECTION, "--stream",
                                "--run-config", *_overrides(out, **config)],
                               env=first.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 240
            while time.time() < deadline:
                runs = [p for p in out.iterdir() if p.is_dir()]
                if runs and len(read_jsonl(runs[0] / "metrics.jsonl")) >= 3:  # rounds 0-2 checkpointed
                    break
                time.sleep(0.5)
            for process in reversed(first.processes):  # the machine goes down: everything at once
                stop_process_group(process, grace_s=0.1)
        finally:
            run.kill()
    _assert_all_stopped(first)
    run_dir = _run_dir(out)
    assert 2 <= read_jsonl(run_dir / "metrics.jsonl")[-1]["round"] < 4

    second = LocalDeployment(num_supernodes=2, state_dir=state_dir)
    with second:
        result = second.run(ROOT, _overrides(out, **{**config, "resume-from": str(run_dir)}), capture=True,
                            timeout=300)
    _assert_all_stopped(second)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == list(range(5))  # no round lost, none repeated in the record
    run_config = json.loads((run_dir / "run.json").read_text())["config"]
    for pid in (0, 1):  # each agent kept its replay, ε schedule and step count across the crash
        context = Context(run_id=0, node_id=0, node_config={"partition-id": pid}, state=RecordDict(),
                          run_config=run_config)
        assert load_state(context, state_dir / f"node-{pid}" / f"partition-{pid}.state")
        agent = DQNAgent.from_bytes(context.state[AGENT_STATE_KEY]["blob"])
        steps = config["steps-per-round"]
        # 4 rounds of steps at least; one more if it had trained in the round the crash interrupted
        assert 4 * steps <= agent.env_steps <= 5 * steps, agent.env_steps
