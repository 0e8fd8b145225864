"""End to end: two runs of one seed give the same numbers (CartPole Fusion, 3 clients on fewer Ray actors;
asynchronous MNIST on the mobile profile's virtual clock).

With 3 clients on 2 actors, a client's rounds land on different processes; before `EpisodeLog`, the
second round already differed between two runs of the same seed.
"""

import pytest

from fedrl_app.server.recorder import read_jsonl
from tests.test_e2e_mnist import _run as run_mnist
from tests.test_e2e_rl import _run as run_small

pytestmark = pytest.mark.e2e
NUM_SUPERNODES = 3
FUSION = {"strategy": "fusion", "num-server-rounds": 4, "experience-sample": 64, "server-updates-per-round": 20}
# what a run learns and reports; wall-clock times are left out
ROUND_KEYS = ("return", "trust-weights", "server-td-loss", "experience-admitted", "global-buffer-size")
CLIENT_KEYS = ("round", "partition_id", "episode_returns", "episode_lengths", "epoch_losses", "env_steps")


def _run(sim, out):
    """The small CartPole run of `tests/test_e2e_rl.py` with Fusion for 4 rounds; what it learned and reported."""
    run_dir = run_small(sim, out, **FUSION)
    rounds = [{k: r.get(k) for k in ROUND_KEYS} for r in read_jsonl(run_dir / "metrics.jsonl")]
    clients = sorted(([c[k] for k in CLIENT_KEYS] for c in read_jsonl(run_dir / "clients.jsonl")), key=str)
    return rounds, clients


def test_two_runs_of_one_seed_agree(sim, tmp_path):
    first, second = _run(sim, tmp_path / "a"), _run(sim, tmp_path / "b")
    assert len(first[0]) == 5 and len(first[1]) == 3 * 4
    assert first == second


def test_two_runs_of_one_seed_sample_the_same_partitions(sim, tmp_path):
    """fraction-train < 1: Flower samples from the node list, whose node ids the SuperLink draws anew per run;
    the seeded draw over partition order picks the same partitions (and so the same numbers) each time."""
    def sampled(out):
        run_dir = run_small(sim, out, **{"num-server-rounds": 4, "fraction-train": 0.6})
        clients = read_jsonl(run_dir / "clients.jsonl")
        by_round = [sorted(c["partition_id"] for c in clients if c["round"] == r) for r in range(1, 5)]
        return by_round, sorted(([c[k] for k in CLIENT_KEYS] for c in clients), key=str)

    first, second = sampled(tmp_path / "a"), sampled(tmp_path / "b")
    # int(0.6 * 3) = 1 node, raised to Flower's min_train_nodes = 2: two of the three partitions a round
    assert all(len(p) == 2 for p in first[0]), first[0]
    assert len({tuple(p) for p in first[0]}) > 1, first[0]  # a draw per round, not one fixed pair
    assert first == second


def test_two_asynchronous_runs_of_one_seed_agree(sim, tmp_path):
    """Arrival order is the virtual clock's, which the partitions' profiles and the bytes moved decide; the
    first dispatches, their attempt numbers (each one's availability draw) and ties follow partition order,
    not the node ids the SuperLink draws anew for each run."""
    def run(out):
        config = {"strategy": "drl-compress", "async-aggregation": True, "buffer-size": 2, "num-server-rounds": 4,
                  "systems-profile": "mobile", "wandb-mode": "disabled"}
        result, log = run_mnist(sim, out, **config)
        assert result.returncode == 0, log[-3000:]
        (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
        keys = ("accuracy", "staleness", "sim-time", "uplink-bytes", "clients-unavailable")
        return [{k: r.get(k) for k in keys} for r in read_jsonl(run_dir / "metrics.jsonl")]

    first, second = run(tmp_path / "a"), run(tmp_path / "b")
    assert len(first) == 5 and max(t for r in first[1:] for t in r["staleness"]) >= 1  # really asynchronous
    assert first == second
