"""benchmarks/systems.py: the numbers its table is made of, from hand-made metrics rows."""

import pytest

from benchmarks import systems
from benchmarks.common import write_jsonl
from benchmarks.systems import METHODS, free_upload_floor_h, summarise, time_split, upload_ceiling


def _rows():
    return [
        {"round": 0, "accuracy": 0.1, "uplink-bytes-total": 0, "sim-time-s": 0.0},
        {"round": 1, "accuracy": 0.975, "uplink-bytes-total": 2e6, "sim-time-s": 3600.0, "clients-late": 1,
         "clients-unavailable": 2, "client-times-s": {"0": [1.0, 6.0, 1.0], "1": [0.0, 2.0, 0.0]}},
        {"round": 2, "accuracy": 0.985, "uplink-bytes-total": 3e6, "sim-time-s": 5400.0, "clients-late": 0,
         "clients-unavailable": 1, "client-times-s": {"0": [1.0, 7.0, 1.0]}},
    ]


def test_time_split_is_the_share_of_all_client_seconds():
    assert time_split(_rows()) == pytest.approx((2 / 19, 15 / 19, 2 / 19))
    assert time_split([{"round": 0}]) == (0.0, 0.0, 0.0)


def test_upload_ceiling_is_the_round_time_free_uplinks_would_remove():
    rows = [
        {"round": 0},
        # the slowest client by download + compute (0: 7 s) is not the last to finish (1: 2 + 6 = 8 s)
        {"round": 1, "round-sim-time-s": 8.0, "client-times-s": {"0": [1.0, 6.0, 0.5], "1": [0.0, 2.0, 6.0]}},
        {"round": 2, "round-sim-time-s": 10.0, "client-times-s": {"0": [1.0, 7.0, 2.0]}},
        {"round": 3, "round-sim-time-s": 4.0},  # nobody replied: the round's time stands
    ]
    assert upload_ceiling(rows) == pytest.approx(1 - (7.0 + 8.0 + 4.0) / 22.0)
    assert upload_ceiling([{"round": 0}]) == 0.0


def test_summary_reads_times_and_bytes_at_the_first_round_on_target():
    s = summarise(_rows())
    assert (s["h-to-0.97"], s["h-to-0.98"]) == (1.0, 1.5)
    assert (s["mb-to-0.97"], s["mb-to-0.98"]) == (2.0, 3.0)
    assert (s["late"], s["unavailable"], s["final"], s["sim-h"]) == (1, 3, 0.985, 1.5)


def test_the_methods_are_the_issues_baselines():
    sync = {name: m for name, m in METHODS.items() if name.startswith("topk-") and not name.endswith("-async")}
    assert sorted(m["topk-ratio"] for m in sync.values()) == [0.001, 0.003, 0.01, 0.03, 0.1]
    for name in ("topk-1-async", "topk-10-async"):  # the same fixed rate, on the async clock
        assert METHODS[name] == {**sync[name.removesuffix("-async")], "async-aggregation": True}
    assert METHODS["bandwidth-rule"]["sync-policy"] == "bandwidth-rule"
    assert METHODS["fedbuff"] == {"strategy": "fedavg", "async-aggregation": True}
    assert METHODS["drl-compress-async"]["async-aggregation"] and METHODS["drl-compress"]["controller-features"] == "resources"


def test_shifts_rotate_and_relabel_exactly_per_group():
    import torch

    from fedrl_app.tasks.mnist import apply_shift, label_permutation, shift_group

    x = torch.arange(4.0).reshape(1, 1, 2, 2)  # [[0, 1], [2, 3]]
    y = torch.tensor([3])
    assert [shift_group(p) for p in range(6)] == [0, 1, 2, 3, 0, 1]
    assert apply_shift((x, y), "rotate", 0)[0].equal(x)
    assert apply_shift((x, y), "rotate", 1)[0].flatten().tolist() == [1.0, 3.0, 0.0, 2.0]  # 90° counter-clockwise
    assert apply_shift((x, y), "rotate", 2)[0].flatten().tolist() == [3.0, 2.0, 1.0, 0.0]
    assert apply_shift((x, y), "permute-labels", 0)[1].tolist() == [3]
    assert apply_shift((x, y), "permute-labels", 2)[1].tolist() == [int(label_permutation(2)[3])]
    assert sorted(label_permutation(3).tolist()) == list(range(10))
    assert apply_shift((x, y), "none", 3)[0].equal(x)


def test_cluster_ari_reads_the_last_assignment_against_the_true_groups():
    from benchmarks.data_shift import cluster_ari

    clients = [{"node-id": 10 + p, "partition_id": p} for p in range(8)]
    perfect = {str(10 + p): (p % 4 + 1) % 4 for p in range(8)}      # the groups, under other cluster names
    assert cluster_ari([{"round": 1}, {"round": 2, "cluster-of-node": perfect}], clients) == 1.0
    one = {str(10 + p): 0 for p in range(8)}
    assert cluster_ari([{"round": 2, "cluster-of-node": one}], clients) == 0.0
    assert cluster_ari([{"round": 2}], clients) is None


def test_upload_ceiling_rounds_are_the_slowest_clients_clock_time():
    from benchmarks.upload_ceiling import mean_round_s
    from fedrl_app.systems.profiles import SystemsModel, median_mobile_profile

    model, p = SystemsModel("uniform", seed=1), median_mobile_profile()
    # uniform: every client is the median one and always available, so every round is one client's time
    want = p.download_s(860_000) + p.compute_s(400) + p.upload_s(1_000)
    assert mean_round_s(model, clients=10, sample=3, rounds=4, dense=860_000, upload=1_000, samples=400,
                        seed=1) == pytest.approx(want)


def test_run_labels_and_overrides():
    from benchmarks.common import run_config_overrides
    from benchmarks.systems import setting_name

    assert setting_name("mobile", 0.0) == "mobile"
    assert setting_name("mobile", 60.0, width=4, local_samples=400) == "mobile-d60-w4-s400"
    assert setting_name("mobile", 0.0, clients=100) == "mobile-c100"
    assert run_config_overrides(["local-test-fraction=0.05", "trust=param-cosine", "clustering=true"]) == {
        "local-test-fraction": 0.05, "trust": "param-cosine", "clustering": True}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        run_config_overrides(["oops"])


def _timed(accuracies: list[float], round_s: float, compute_s: float) -> list[dict]:
    """Rounds of `round_s` each whose one client downloads 0 s, computes `compute_s` and uploads the rest."""
    rows, t = [{"round": 0, "accuracy": 0.1, "uplink-bytes-total": 0, "sim-time-s": 0.0}], 0.0
    for r, acc in enumerate(accuracies, start=1):
        t += round_s
        rows.append({"round": r, "accuracy": acc, "uplink-bytes-total": r, "sim-time-s": t, "round-sim-time-s": round_s,
                     "client-times-s": {"0": [0.0, compute_s, round_s - compute_s]}})
    return rows


def test_free_upload_floor_counts_the_rounds_to_target_at_their_download_plus_compute_time():
    rows = _timed([0.9, 0.96, 0.971, 0.99], round_s=1800.0, compute_s=600.0)
    assert free_upload_floor_h(rows, 0.97) == pytest.approx(3 * 600.0 / 3600)  # rounds 1-3, 600 s each
    assert free_upload_floor_h(rows, 0.995) is None


def test_headroom_compares_the_best_fixed_rate_with_fedavgs_free_upload_floor(tmp_path, monkeypatch):
    monkeypatch.setattr(systems, "OUT", tmp_path)
    # seed 1: FedAvg reaches 97% in round 3 (1,800 s rounds, 600 s of them compute): 1.5 h, floor 0.5 h;
    # top-10% needs 4 rounds of 900 s (1.0 h), so it is the best fixed rate; drl-compress 5 of 900 s (1.25 h)
    write_jsonl(tmp_path / "mobile-fedavg-seed1.jsonl", _timed([0.9, 0.96, 0.971], 1800.0, 600.0))
    write_jsonl(tmp_path / "mobile-topk-10-seed1.jsonl", _timed([0.9, 0.95, 0.96, 0.972], 900.0, 600.0))
    write_jsonl(tmp_path / "mobile-topk-1-seed1.jsonl", _timed([0.9, 0.95, 0.96, 0.965], 700.0, 600.0))  # never 97%
    write_jsonl(tmp_path / "mobile-drl-compress-seed1.jsonl", _timed([0.9, 0.95, 0.96, 0.965, 0.975], 900.0, 600.0))
    row = [line for line in systems.headroom_lines() if line.startswith("| mobile |")]
    assert row == ["| mobile | 1 | 3.0 | 1.50 | 0.50 | 1.00 (topk-10) | 2.00× | 1.25 (1.25×)" + " | not run" * 7 + " |"]
    # a shared controller that never gets there: said so, with no ratio
    write_jsonl(tmp_path / "mobile-drl-compress-shared-seed1.jsonl", _timed([0.9, 0.95], 900.0, 600.0))
    row = [line for line in systems.headroom_lines() if line.startswith("| mobile |")]
    assert row[0].endswith("| 1.25 (1.25×) | not reached" + " | not run" * 6 + " |")


def test_decisions_are_grouped_by_the_clients_uplink_band():
    assert [systems.link_band(x) for x in (0.5, 2.999, 3.0, 11.9, 12.0, 500.0)] == ["< 3", "< 3", "3–12", "3–12",
                                                                                  "≥ 12", "≥ 12"]
    rows = [{"partition_id": 0, "sync_decision": d, "compression_rate": r}
            for d, r in (("full", 0.01), ("compressed", 0.01), ("raise-compression", 0.005), ("skip", 0.005))]
    rows += [{"partition_id": 1, "sync_decision": "compressed", "compression_rate": 0.1},
             {"partition_id": 1, "sync_decision": None, "compression_rate": 0.1}]  # (no decision: not counted)
    # the pace action counts as what it sent
    rows += [{"partition_id": 2, "sync_decision": d, "compression_rate": 0.02} for d in ("pace-full", "pace-compressed")]
    out = systems.decisions_by_link(rows, {0: 1.5, 1: 20.0, 2: 5.0})
    assert list(out) == ["< 3", "3–12", "≥ 12"]
    assert out["< 3"] == {"client-rounds": 4, "dense": 0.25, "skip": 0.25, "compressed": 0.5, "median-rate": 0.0075}
    assert out["3–12"] == {"client-rounds": 2, "dense": 0.5, "skip": 0.0, "compressed": 0.5, "median-rate": 0.02}
    assert out["≥ 12"] == {"client-rounds": 1, "dense": 0.0, "skip": 0.0, "compressed": 1.0, "median-rate": 0.1}
