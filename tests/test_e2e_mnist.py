"""End to end: the app through `flwr run` on a private simulation SuperLink (2 rounds, tiny data)."""

import json
import re

import pytest
import torch

from benchmarks.common import ROOT, run_config_args
from fedrl_app.server.recorder import read_jsonl

pytestmark = pytest.mark.e2e
NUM_SUPERNODES = 3

TINY = {"max-client-examples": 400, "local-test-fraction": 0.25, "local-epochs": 2, "eval-batch-size": 2000}


def _run(sim, tmp_path, **overrides):
    config = {**TINY, "outputs-dir": str(tmp_path), **overrides}
    result = sim.run(ROOT, run_config_args(config), capture=True, timeout=300)
    return result, result.stdout + result.stderr


def test_two_rounds_write_every_artefact_then_resume(sim, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    result, log = _run(sim, tmp_path, **{"num-server-rounds": 2, "wandb-mode": "offline"})
    assert result.returncode == 0, log[-3000:]
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    for name in ("metrics.jsonl", "clients.jsonl", "best_model.pt", "best.json", "last.pt", "run.json",
                 "accuracy.png", "loss.png", "bytes.png"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "wandb").glob("offline-run-*")), "no offline W&B run"
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    model_bytes = sum(t.numel() * 4 for t in torch.load(run_dir / "best_model.pt").values())
    for r in rows[1:]:
        assert {"accuracy", "loss", "uplink-bytes", "downlink-bytes", "wall-s"} <= set(r)
        assert r["clients-accepted"] == 3 and r["clients-dropped"] == 0
        # 3 clients send a model each, plus metrics and pickled metadata (~2 KB); downlink adds the
        # evaluate round (fraction 0.5 -> at least 2 nodes)
        assert 3 * model_bytes <= r["uplink-bytes"] < 3 * model_bytes + 3 * 4000
        assert 5 * model_bytes <= r["downlink-bytes"] < 5 * model_bytes + 5 * 2000
    assert rows[2]["accuracy"] > rows[0]["accuracy"] + 0.2  # it learns, even on 900 images
    clients = read_jsonl(run_dir / "clients.jsonl")
    assert sorted(c["partition_id"] for c in clients if c["round"] == 1) == [0, 1, 2]
    assert all(c["num_examples"] == 300 and c["bytes_sent"] > model_bytes for c in clients)
    assert f"results in {run_dir}" in log

    result, log = _run(sim, tmp_path, **{"num-server-rounds": 3, "resume-from": str(run_dir), "wandb-mode": "disabled"})
    assert result.returncode == 0, log[-3000:]
    assert f"resuming {run_dir} from round 2" in log
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert rows[3]["uplink-bytes-total"] == rows[2]["uplink-bytes-total"] + rows[3]["uplink-bytes"]
    assert json.loads((run_dir / "run.json").read_text())["resumed-at-rounds"] == [2]


@pytest.mark.parametrize("strategy", ["fedprox", "scaffold", "fedadagrad"])
def test_each_strategy_runs(sim, tmp_path, strategy):
    result, log = _run(sim, tmp_path, strategy=strategy, **{"num-server-rounds": 1, "wandb-mode": "disabled"})
    assert result.returncode == 0, log[-3000:]
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert rows[-1]["round"] == 1 and rows[-1]["clients-accepted"] == 3


def test_bad_config_stops_at_start_naming_the_key(sim, tmp_path):
    result, log = _run(sim, tmp_path, strategy="fedsgdx", **{"wandb-mode": "disabled"})
    assert result.returncode != 0 and result.status == "finished:failed"
    assert "config key 'strategy' is 'fedsgdx'; allowed values" in log
    assert not any(tmp_path.iterdir()), "a refused run must not create outputs"


def test_drl_compress_sends_fewer_uplink_bytes_than_fedavg(sim, tmp_path):
    uplink = {}
    for strategy in ("fedavg", "drl-compress"):
        out = tmp_path / strategy
        result, log = _run(sim, out, strategy=strategy, **{"num-server-rounds": 2, "wandb-mode": "disabled"})
        assert result.returncode == 0, log[-3000:]
        (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
        rows = read_jsonl(run_dir / "metrics.jsonl")
        uplink[strategy] = rows[-1]["uplink-bytes-total"]
        if strategy == "drl-compress":
            for r in rows[1:]:
                assert r["sync-full"] + r["sync-compressed"] + r["sync-skip"] + r["sync-raise-compression"] \
                    + r["sync-lower-compression"] == 3
            clients = read_jsonl(run_dir / "clients.jsonl")
            assert all(c["sync_decision"] is not None and c["local_accuracy"] is not None for c in clients)
            assert all(c["controller_reward"] is not None for c in clients if c["round"] == 2)
    # a controller that picks full sync for every client in both rounds would tie: its Q-network
    # starts at −λ for full sync and 0 elsewhere, and exploration draws full with weight 0.02, so
    # that is vanishingly unlikely; any other choice sends less
    assert uplink["drl-compress"] < uplink["fedavg"], uplink


@pytest.mark.parametrize(
    ("overrides", "check"),
    [
        ({"async-aggregation": True, "buffer-size": 2, "num-server-rounds": 3},
         lambda rows: all(len(r["staleness"]) == 2 and r["sim-time"] > 0 for r in rows[1:])
         and max(t for r in rows[1:] for t in r["staleness"]) >= 1),
    ],
    ids=["async"],
)
def test_drl_compress_async_and_clustered(sim, tmp_path, overrides, check):
    result, log = _run(sim, tmp_path, strategy="drl-compress", **{"wandb-mode": "disabled", **overrides})
    assert result.returncode == 0, log[-3000:]
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == list(range(overrides["num-server-rounds"] + 1))
    assert check(rows), rows


def test_a_clustered_run_resumes_with_each_partition_in_its_cluster(sim, tmp_path):
    """The resumed run's nodes have new ids: the checkpoint finds each client by its partition."""
    clustered = {"strategy": "drl-compress", "clustering": True, "cluster-every": 2, "wandb-mode": "disabled"}
    result, log = _run(sim, tmp_path, **{"num-server-rounds": 2, **clustered})
    assert result.returncode == 0, log[-3000:]
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert all(r["clusters"] >= 1 and 0 <= r["personalized-accuracy"] <= 1 for r in rows[1:]), rows
    clusters = rows[2]["cluster-of-partition"]
    assert sorted(clusters) == ["0", "1", "2"]

    result, log = _run(sim, tmp_path, **{"num-server-rounds": 3, "resume-from": str(run_dir), **clustered})
    assert result.returncode == 0, log[-3000:]
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert rows[3]["cluster-of-partition"] == clusters, (clusters, rows[3])  # no re-clustering in round 3
    assert rows[3]["clients-accepted"] == 3 and rows[3]["clients-dropped"] == 0, rows[3]


def test_mobile_clients_on_the_virtual_clock_with_a_deadline(sim, tmp_path):
    # 300 training samples × 2 epochs: partition 0 computes 28 s on seed 3's mobile profile, 1 and 2 over 60 s
    overrides = {"num-server-rounds": 2, "systems-profile": "mobile", "round-deadline-s": 40.0, "seed": 3,
                 "controller-features": "resources", "time-penalty": 0.1, "wandb-mode": "disabled"}
    result, log = _run(sim, tmp_path, strategy="drl-compress", **overrides)
    assert result.returncode == 0, log[-3000:]
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    rows = read_jsonl(run_dir / "metrics.jsonl")
    for r in rows[1:]:
        assert r["clients-accepted"] + r["clients-late"] + r["clients-unavailable"] == 3, r
        assert r["round-sim-time-s"] == 40.0 and r["clients-accepted"] == 1  # partitions 1, 2 late: wait it out
        assert all(compute > 0 and compute + down + up <= 40.0 for down, compute, up in r["client-times-s"].values())
    assert rows[2]["sim-time-s"] == pytest.approx(rows[1]["round-sim-time-s"] + rows[2]["round-sim-time-s"])
    assert sum(r["clients-late"] + r["clients-unavailable"] for r in rows[1:]) >= 1, rows  # the profile bites
    clients = read_jsonl(run_dir / "clients.jsonl")
    assert all(len(c["controller_state"]) == 9 for c in clients)  # the controller sees its resources


def test_krum_with_byzantine_clients_runs(sim, tmp_path):
    result, log = _run(sim, tmp_path, strategy="krum", **{"num-server-rounds": 2, "byzantine-fraction": 0.34,
                                                           "krum-malicious": 1, "wandb-mode": "disabled"})
    assert result.returncode == 0, log[-3000:]
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert rows[-1]["round"] == 2 and rows[-1]["clients-accepted"] == 3
    assert rows[-1]["accuracy"] > rows[0]["accuracy"] + 0.2  # one sign-flipping client out of three is outvoted


def test_client_side_dp_clips_at_the_clients_and_epsilon_survives_a_resume(sim, tmp_path):
    # C is far below a local epoch's update norm: had a client not clipped (Flower's fixedclipping_mod),
    # the server would refuse its reply and count it dropped
    dp = {"dp-mode": "client", "dp-noise-multiplier": 0.5, "dp-clipping-norm": 0.05, "wandb-mode": "disabled"}
    result, log = _run(sim, tmp_path, **{"num-server-rounds": 2, **dp})
    assert result.returncode == 0, log[-3000:]
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    rows = read_jsonl(run_dir / "metrics.jsonl")
    for r in rows[1:]:
        assert r["clients-accepted"] == 3 and r["clients-dropped"] == 0 and r["dp-clipped-replies"] == 3
        assert r["dp-noise-stdev"] == pytest.approx(0.5 * 0.05 / 3)
    assert 0 < rows[1]["dp-epsilon"] < rows[2]["dp-epsilon"] and rows[2]["dp-releases"] == 2

    result, log = _run(sim, tmp_path, **{"num-server-rounds": 3, "resume-from": str(run_dir), **dp})
    assert result.returncode == 0, log[-3000:]
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert rows[3]["dp-releases"] == 3 and rows[3]["dp-epsilon"] > rows[2]["dp-epsilon"]


def test_a_client_sending_a_pickle_exploit_is_refused_every_round(sim, tmp_path):
    result, log = _run(sim, tmp_path, **{"num-server-rounds": 2, "byzantine-fraction": 0.34,
                                         "byzantine-attack": "pickle-exploit", "wandb-mode": "disabled"})
    assert result.returncode == 0, log[-3000:]
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]  # no round lost
    for r in rows[1:]:
        assert r["clients-accepted"] == 2 and r["clients-dropped"] == 1
        assert re.search(r"global '(posix|os)\.system'.*not in the allowlist", r["drop-reasons"][0]), r["drop-reasons"]
    assert "a metadata payload ran code" not in log
