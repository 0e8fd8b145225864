"""End to end: FedAvg over DQN clients on CartPole through `flwr run` (2 rounds, small budget)."""

import json

import pytest

from benchmarks.common import ROOT, run_config_args
from fedrl_app.server.recorder import read_jsonl

pytestmark = pytest.mark.e2e
NUM_SUPERNODES = 2


SMALL = {"task": "cartpole", "num-server-rounds": 2, "steps-per-round": 300, "dqn-hidden": 32,
         "dqn-learning-starts": 100, "dqn-batch-size": 32, "eval-episodes": 2, "fraction-evaluate": 0.0,
         "wandb-mode": "disabled"}


def _run(sim, tmp_path, **overrides):
    """One small CartPole run; returns its run directory."""
    config = {**SMALL, "outputs-dir": str(tmp_path), **overrides}
    result = sim.run(ROOT, run_config_args(config), capture=True, timeout=300)
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
    assert all((run_dir / f).is_file() for f in ("return.png", "client-returns.png", "bytes.png", "best_model.pt"))
    assert not (run_dir / "fusion.png").exists()
    assert all(r["clients-solved"] == 0 for r in rows[1:])  # 600 steps are far from a 100-episode mean of 475
    assert json.loads((run_dir / "solved.json").read_text())["federation-solved-round"] is None


def test_cartpole_fusion_two_rounds(sim, tmp_path):
    run_dir = _run(sim, tmp_path, strategy="fusion", **{"experience-sample": 64, "server-updates-per-round": 20})
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert r["experience-offered"] == 2 * 64 and 0 < r["experience-admitted"] <= 128
        # 2 clients × 64 transitions × (4 + 1 + 1 + 4 + 1) float32; gzip saves some of it
        assert r["experience-raw-bytes"] == 2 * 64 * 11 * 4 and 0 < r["experience-gzip-bytes"] < r["experience-raw-bytes"]
        assert r["model-gzip-bytes"] > 0
        assert len(r["trust-weights"]) == 2 and abs(sum(r["trust-weights"]) - 1) < 1e-9
        assert r["server-updates"] == 20
    assert rows[2]["global-buffer-size"] >= rows[1]["global-buffer-size"]
    assert (run_dir / "fusion.png").is_file() and (run_dir / "client-returns.png").is_file()


def test_cartpole_fusion_on_varied_dynamics_with_a_faulty_agent(sim, tmp_path):
    run_dir = _run(sim, tmp_path, strategy="fusion", **{
        "experience-sample": 64, "server-updates-per-round": 20, "env-variation": "gravity=9.8,4.0; length=0.5,1.0",
        "byzantine-fraction": 0.5, "byzantine-attack": "reward-flip", "fusion-deploy": "average"})
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    # the run's model is the trust-weighted mix; the learner's network, which the clients get, is judged beside it
    assert "sent-return" not in rows[0] and all(r["sent-return"] >= 8 for r in rows[1:])
    assert rows[2]["sent-return-envs"] == (rows[2]["sent-return-env-0"] + rows[2]["sent-return-env-1"]) / 2
    # the global policy on the nominal environment every round, and on both clients' dynamics every
    # 10th round and at the last
    assert all(r["return"] >= 8 for r in rows) and "return-env-0" not in rows[1]
    for r in (rows[0], rows[2]):
        assert r["return-env-0"] >= 8 and r["return-env-1"] >= 8
        assert r["return-envs"] == (r["return-env-0"] + r["return-env-1"]) / 2
    for r in rows[1:]:
        assert r["trust-partitions"] == [0, 1] and len(r["trust-similarities"]) == 2
    clients = read_jsonl(run_dir / "clients.jsonl")
    # partition 0 learns from −1 per step but reports the environment's own returns
    assert all(c["episode_returns"] == [float(n) for n in c["episode_lengths"]] for c in clients)


# Four episodes, not two: with a leave-one-out baseline, two CartPole episodes of equal length
# (reward 1 per step) have identical rewards-to-go, so every advantage and the gradient are exactly 0
# (a CI run once drew that, and AFedPG rightly took no step). Four equal lengths are very unlikely.
PG_EPISODES = 4
PG_SMALL = {"pg-batch-episodes": PG_EPISODES, "pg-hidden": 8}


def test_cartpole_fedpg_two_rounds(sim, tmp_path):
    run_dir = _run(sim, tmp_path, strategy="fedpg", **PG_SMALL, **{"fraction-evaluate": 1.0})
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(r["return"] >= 8 for r in rows) and all(r["client-eval-return"] >= 8 for r in rows[1:])
    for r in rows[1:]:
        assert r["uploads"] == 2 and r["step-norm"] > 0 and r["sim-time"] > 0 and r["env-steps"] >= 2 * PG_EPISODES * 8
    clients = read_jsonl(run_dir / "clients.jsonl")
    assert len(clients) == 4 and all(c["trajectories"] == PG_EPISODES and c["gradient_uploaded"] for c in clients)
    assert all(c["env_steps"] == sum(c["episode_lengths"]) for c in clients)
    assert (run_dir / "best_model.pt").is_file()


def test_cartpole_lapg_two_rounds_skips_when_the_bound_is_loose(sim, tmp_path):
    run_dir = _run(sim, tmp_path, strategy="lapg", **PG_SMALL, **{"lapg-threshold": 1e9})
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[1]["uploaded"] == [0, 1] and rows[1]["uploads-saved"] == 0  # nothing to reuse yet
    assert rows[2]["skipped"] == [0, 1] and rows[2]["uploads-saved-total"] == 2 and rows[2]["uploads"] == 0
    assert rows[2]["uplink-bytes"] < rows[1]["uplink-bytes"] / 2  # metadata only
    assert rows[2]["step-norm"] == pytest.approx(rows[1]["step-norm"], rel=1e-5)  # the same two gradients, reused


def test_cartpole_afedpg_three_updates(sim, tmp_path):
    run_dir = _run(sim, tmp_path, strategy="afedpg", **PG_SMALL, **{"num-server-rounds": 3})
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    times = [r["sim-time"] for r in rows[1:]]
    assert times == sorted(times) and times[0] > 0
    for r in rows[1:]:
        assert r["uploads"] == 1 and r["step-norm"] == pytest.approx(0.1) and 0 < r["eta"] <= 1
    assert rows[1]["eta"] == 1.0 and rows[1]["lookahead-distance"] == 0.0  # the first gradient has no momentum
    assert len(read_jsonl(run_dir / "clients.jsonl")) == 3
