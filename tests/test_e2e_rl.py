"""End to end: FedAvg over DQN clients on CartPole through `flwr run` (2 rounds, small budget)."""

import pytest

from benchmarks.common import ROOT, toml_value
from fedrl_app.hooks import read_jsonl
from fedrl_app.launch import LocalSimulation, _pids_mentioning


@pytest.fixture(scope="module")
def sim():
    simulation = LocalSimulation(num_supernodes=2)
    with simulation:
        yield simulation
    assert _pids_mentioning(f"127.0.0.1:{simulation.port}") == []


SMALL = {"task": "cartpole", "num-server-rounds": 2, "steps-per-round": 300, "dqn-hidden": 32,
         "dqn-learning-starts": 100, "dqn-batch-size": 32, "eval-episodes": 2, "fraction-evaluate": 0.0,
         "wandb-mode": "disabled"}


def _run(sim, tmp_path, **overrides):
    """One small CartPole run; returns its run directory."""
    config = {**SMALL, "outputs-dir": str(tmp_path), **overrides}
    result = sim.run(ROOT, [" ".join(f"{k}={toml_value(v)}" for k, v in config.items())], capture=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    return run_dir


@pytest.mark.parametrize("agent", ["double-dueling"])
def test_cartpole_fedavg_two_rounds(sim, tmp_path, agent):
    run_dir = _run(sim, tmp_path, agent=agent)
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["return"] >= 8 for r in rows)  # CartPole returns at least ~8 steps per episode
    clients = read_jsonl(run_dir / "clients.jsonl")
    assert len(clients) == 4
    for c in clients:
        assert c["env_steps"] == 300 and c["act_flops"] > 0
        assert len(c["episode_returns"]) == len(c["episode_lengths"]) and c["episode_returns"] == [
            float(n) for n in c["episode_lengths"]]  # CartPole pays +1 per step
    for pid in (0, 1):  # episodes continue across rounds, so only the total is bounded
        assert sum(sum(c["episode_lengths"]) for c in clients if c["partition_id"] == pid) <= 600
    # round 2 trains: learning starts after 100 steps, one gradient step every 4 env steps
    assert all(c["train_flops"] > 0 for c in clients if c["round"] == 2)
    assert (run_dir / "return.png").is_file() and (run_dir / "best_model.pt").is_file()


def test_cartpole_fusion_two_rounds(sim, tmp_path):
    run_dir = _run(sim, tmp_path, strategy="fusion", **{"experience-sample": 64, "server-updates-per-round": 20})
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert r["experience-offered"] == 2 * 64 and 0 < r["experience-admitted"] <= 128
        assert len(r["trust-weights"]) == 2 and abs(sum(r["trust-weights"]) - 1) < 1e-9
        assert r["server-updates"] == 20
    assert rows[2]["global-buffer-size"] >= rows[1]["global-buffer-size"]
