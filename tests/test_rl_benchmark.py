"""The RL heterogeneity benchmark's report: runs from other folders join once, attacks are measured against clean."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import rl_heterogeneity
from benchmarks.lunarlander import client_curves
from benchmarks.rl_heterogeneity import (
    deployed_lines,
    dips_cell,
    faulty_weight_blocks,
    faulty_weight_per_round,
    final_greedy,
    late_dips,
    own_env_final,
    own_env_return_at,
    report,
    settings_label,
    share_of_clean,
    summarise,
)
from fedrl_app.config import RunConfig
from fedrl_app.server.registry import task_model
from fedrl_app.tasks.gym_rl import evaluate_policy

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
CLEAN = RESULTS / "rl_fusion_mix0" / "fusion-none-n3-seed1.json"
VARIED = RESULTS / "rl_fusion_mix0" / "fusion-varied-n3-seed1.json"


def test_report_includes_runs_from_another_folder_and_refuses_a_run_twice(tmp_path):
    shutil.copy(VARIED, tmp_path / VARIED.name)
    table = report("cmd", tmp_path, [CLEAN])
    rows = [line for line in table.splitlines() if line.startswith("| 3 |")]
    earlier = "fusion (trust-clip=median-update, trust-weighting=proportional)"  # Fusion's defaults then
    assert [row.split(" | ")[1:3] for row in rows] == [["none", earlier], ["varied", earlier]]
    assert (tmp_path / "returns-none-n3.png").is_file() and (tmp_path / "table.md").read_text() == table
    with pytest.raises(SystemExit, match="fusion-varied-n3-seed1.json is the same run"):
        report("cmd", tmp_path, [VARIED])


def _run(condition: str, finals: dict[int, float], seed: int = 1) -> dict:
    """A saved run of 3 clients whose every episode returns its partition's value (one round, 150 episodes)."""
    clients = [{"round": 1, "partition_id": pid, "episode_returns": [ret] * 150, "episode_lengths": [10] * 150,
                "env_steps": 1500, "act_flops": 1, "train_flops": 2} for pid, ret in finals.items()]
    return {"method": "fusion", "condition": condition, "n": 3, "seed": seed, "metrics": [], "clients": clients,
            "train-frequency": 1, "n-step": 3, "overrides": {"seed": seed}}


def test_late_dips_count_the_honest_clients_rounds_below_100_in_the_last_40_percent():
    # 10 rounds: the last 40% are rounds 7–10; partition 0 is faulty (never counted)
    means = {1: [250, 250, 250, 90, 250, 250, 250, 250, 99, 250],   # dips in rounds 4 (too early) and 9
             2: [-100, -100, -100, -100, -100, 150, 100, 20, 20, 30]}  # rounds 8–10 below 100; exactly 100 is not
    clients = [{"round": r + 1, "partition_id": pid, "episode_returns": [m - 10.0, m + 10.0]}
               for pid, ms in means.items() for r, m in enumerate(ms)]
    clients += [{"round": r, "partition_id": 0, "episode_returns": [-500.0]} for r in range(1, 11)]
    clients += [{"round": 7, "partition_id": 3, "episode_returns": []}]  # no finished episode: not a round counted
    run = {"condition": "noise", "rounds": 10, "clients": clients}
    assert late_dips(run) == (1 + 3, 8)
    assert late_dips({**run, "condition": "none"}) == (1 + 3 + 4, 12)  # every partition honest
    assert dips_cell([(4, 8), (0, 12)]) == "20.0% (4 of 20)" and dips_cell([(0, 0)]) == "-"


def test_share_of_clean_compares_the_same_honest_partitions_of_the_same_seed():
    clean = _run("none", {0: 100.0, 1: 200.0, 2: 300.0})
    attacked = _run("noise", {0: -500.0, 1: 180.0, 2: 270.0})
    # partition 0 is the faulty one: (180 + 270) / 2 against (200 + 300) / 2, not against all three (200)
    assert share_of_clean(attacked, clean) == pytest.approx(225.0 / 250.0)
    assert own_env_final(client_curves(attacked["clients"]), {0}) == pytest.approx(225.0)
    assert share_of_clean(attacked, None) is None
    # a clean run that never learned: no share (−10 / −20 would read as "200% kept")
    assert share_of_clean(_run("noise", {0: 0.0, 1: -10.0, 2: -10.0}), _run("none", {0: 0.0, 1: -20.0, 2: -20.0})) is None


def test_report_puts_the_share_of_clean_beside_each_attack_and_says_when_a_seed_has_no_clean_run(tmp_path):
    runs = {"clean-1": _run("none", {0: 100.0, 1: 200.0, 2: 300.0}),
            "noise-1": _run("noise", {0: 0.0, 1: 200.0, 2: 250.0}),
            "noise-2": _run("noise", {0: 0.0, 1: 250.0, 2: 300.0}, seed=2)}
    for name, run in runs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(run))
    main_table, gap_table = report("cmd", tmp_path).split("How the gap forms")
    rows = {line.split(" | ")[1]: line.split(" | ") for line in main_table.splitlines() if line.startswith("| 3 |")}
    assert rows["none"][7] == "-"  # a clean row has nothing to compare with
    assert rows["noise"][7] == "90.0% (1 of 2 seeds)"  # seed 2 has no clean run: left out, and said so
    # the gap table: one row per attacked run, its honest return by each checkpoint beside the clean run's
    gap = [line.split(" | ") for line in gap_table.splitlines() if line.startswith("| 3 |")]
    assert [(g[1], g[3]) for g in gap] == [("noise", "1"), ("noise", "2")]
    assert gap[0][4:6] == ["225 / 225 / 225 / 225 / 225", "250 / 250 / 250 / 250 / 250"]
    assert gap[1][5] == "-"  # seed 2 has no clean run


def test_runs_of_other_settings_get_rows_of_their_own_and_their_own_clean_run(tmp_path):
    clip = {"trust-clip": "median-update"}
    runs = {"clean-1": _run("none", {0: 100.0, 1: 200.0, 2: 300.0}),
            "noise-1": _run("noise", {0: 0.0, 1: 200.0, 2: 250.0}),
            "clip-clean-1": _run("none", {0: 100.0, 1: 100.0, 2: 100.0}),
            "clip-noise-1": _run("noise", {0: 0.0, 1: 100.0, 2: 100.0})}
    for name in ("clip-clean-1", "clip-noise-1"):
        runs[name]["overrides"].update(clip)
    runs["noise-1"]["overrides"]["fusion-mix"] = 0.0  # today's default: no row of its own
    assert settings_label(runs["noise-1"]) == "fusion"
    assert settings_label(runs["clip-noise-1"]) == "fusion (trust-clip=median-update)"
    for name, run in runs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(run))
    main_table = report("cmd", tmp_path).split("How the gap forms")[0]
    rows = {tuple(line.split(" | ")[1:3]): line.split(" | ") for line in main_table.splitlines() if line.startswith("| 3 |")}
    assert sorted(rows) == [("noise", "fusion"), ("noise", "fusion (trust-clip=median-update)"),
                            ("none", "fusion"), ("none", "fusion (trust-clip=median-update)")]
    # each attacked row against the clean run of its own settings: 225 / 250, and 100 / 100
    assert rows[("noise", "fusion")][7] == "90.0%"
    assert rows[("noise", "fusion (trust-clip=median-update)")][7] == "100.0%"


def test_a_run_is_labelled_by_the_settings_it_ran_with_recorded_or_the_defaults_of_its_day():
    def label(method, overrides, config=None):
        run = {"method": method, "condition": "none", "overrides": overrides}
        return settings_label(run if config is None else {**run, "config": config})

    fusion = {"strategy": "fusion"}
    # saved before runs recorded their config, when Fusion's defaults were median-update and proportional
    assert label("fusion", fusion) == "fusion (trust-clip=median-update, trust-weighting=proportional)"
    assert label("fusion", {**fusion, "trust-clip": "median-norm", "trust-weighting": "gate"}) == "fusion"
    assert label("fusion-param", {**fusion, "trust": "param-cosine", "diversity-space": "raw"}) == "fusion-param"
    assert label("fedavg", {"strategy": "fedavg"}) == "fedavg"
    # recorded: what it ran with decides, whatever the defaults are now
    today = RunConfig().as_dict()
    assert label("fusion", fusion, today) == "fusion"
    assert label("fusion", fusion, {**today, "trust-clip": "median-update"}) == "fusion (trust-clip=median-update)"


def test_return_at_a_step_uses_the_episodes_that_ended_by_then_and_weights_come_in_fifths():
    # partition 1: 300 episodes of 100 steps returning 0, 1, 2, ...; partition 2 ends its first episode at step 500
    curves = {1: {"returns": [float(i) for i in range(300)], "end-steps": [100 * (i + 1) for i in range(300)]},
              2: {"returns": [50.0], "end-steps": [500]},
              0: {"returns": [-999.0], "end-steps": [1]}}
    # by step 20,000: partition 1's episodes 100..199 (mean 149.5), partition 2's one episode (50); 0 is excluded
    assert own_env_return_at(curves, {0}, 20_000) == pytest.approx((149.5 + 50.0) / 2)
    assert own_env_return_at(curves, {0}, 10_050) == pytest.approx((49.5 + 50.0) / 2)  # episode 100 ends at 10,100
    assert own_env_return_at(curves, {0}, 400) is None  # partition 2 has no finished episode yet
    rows = [{"round": i + 1, "trust-weights": [w, 1 - w], "trust-partitions": [0, 1]}
            for i, w in enumerate((0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9))]
    run = {"condition": "noise", "metrics": [{"round": 0}, *rows]}
    assert faulty_weight_blocks(run) == pytest.approx([0.05, 0.25, 0.45, 0.65, 0.85])
    # a round without the faulty client counts as absent (NaN), not as weight 0: its fifth averages the other round
    run["metrics"][2] = {"round": 2, "trust-weights": [1.0], "trust-partitions": [1]}
    rounds, weights = faulty_weight_per_round(run)
    assert rounds == list(range(1, 11)) and np.isnan(weights[1]) and weights[2] == pytest.approx(0.2)
    assert faulty_weight_blocks(run)[0] == pytest.approx(0.0)
    # every round absent from a fifth: None there
    run["metrics"][1] = {"round": 1, "trust-weights": [1.0], "trust-partitions": [1]}
    assert faulty_weight_blocks(run)[0] is None
    # the table's column: the mean over the rounds the faulty client took part in
    for row in run["metrics"]:
        row.update({"experience-admitted": 0, "experience-offered": 0, "uplink-bytes-total": 0})
    assert summarise({**run, "clients": []})["faulty-weight"] == pytest.approx(0.55)


def test_the_deployed_table_sets_the_runs_model_beside_the_sent_network_after_round_15():
    run = _run("none", {0: 1.0})
    # round 0 (the initial model) is never judged; rounds 1–15 are learning; 16–20: the mix steady, the sent dips
    run["metrics"] = [{"round": r, "return": -900.0 if r <= 15 else 100.0 + r,
                       "sent-return": -900.0 if r <= 15 else (-50.0 if r in (17, 18) else 200.0)} for r in range(21)]
    run["metrics"] += [{"round": r, "return": 150.0, "sent-return": 300.0 - r} for r in range(21, 36)]
    rows = [line.split(" | ") for line in deployed_lines([run]) if line.startswith("| 3 |")]
    # rounds 16–35: the mix 116…120 then 150; the sent 200 with two dips, then 279…265; from round 31: 150 / 269…265
    assert [r[4:] for r in rows] == [["142 / 116 / 0 / 150", "229 / -50 / 2 / 265", "150 / 150 / 0 / 150",
                                      "267 / 265 / 0 / 265 |"]]
    assert deployed_lines([_run("none", {0: 1.0})]) == []  # no sent network judged: no table


def test_the_final_model_is_judged_on_100_episodes_deployed_network_first_each_honest_clients_env(tmp_path, monkeypatch):
    cfg = RunConfig.from_run_config({"task": "cartpole", "dqn-hidden": 8, "env-variation": "varied"})
    torch.manual_seed(0)
    sent, deployed = task_model(cfg), task_model(cfg)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"config": cfg.as_dict()}))
    torch.save({"round": 3, "arrays": sent.state_dict(), "deployed-arrays": deployed.state_dict()}, run_dir / "last.pt")
    final = final_greedy(run_dir, n=3)
    assert final["nominal"] == evaluate_policy(deployed, "cartpole", 100, seed=20_000) != evaluate_policy(
        sent, "cartpole", 100, seed=20_000)
    assert final["own-envs"]["2"] == evaluate_policy(deployed, "cartpole", 100, seed=20_000, env_params=cfg.env_params(2))
    assert len(final["nominal"]) == 100 and sorted(final["own-envs"]) == ["0", "1", "2"]
    # 7 partitions of a 5-variant profile: partitions 5 and 6 share 0's and 1's dynamics and are played once
    played = []
    real = rl_heterogeneity.evaluate_policy
    monkeypatch.setattr(rl_heterogeneity, "evaluate_policy",
                        lambda *a, **kw: played.append(kw.get("env_params")) or real(*a, **kw))
    seven = final_greedy(run_dir, n=7)
    assert len(played) == 1 + 5 and seven["own-envs"]["5"] == seven["own-envs"]["0"] == final["own-envs"]["0"]
    assert seven["own-envs"]["6"] == final["own-envs"]["1"] != final["own-envs"]["0"]
    # the report: the mean of the honest partitions' envs (partition 0 faulty), '-' for a seed without the key
    run = _run("noise", {0: 0.0, 1: 200.0, 2: 250.0})
    run["final-greedy"] = {"nominal": [10.0, 30.0], "own-envs": {"0": [-900.0], "1": [40.0], "2": [60.0]}}
    assert summarise(run)["final-nominal"] == 20.0 and summarise(run)["final-own-envs"] == 50.0
    (tmp_path / "a.json").write_text(json.dumps(run))
    (tmp_path / "b.json").write_text(json.dumps(_run("noise", {0: 0.0, 1: 200.0, 2: 250.0}, seed=2)))
    main_table = report("cmd", tmp_path).split("How the gap forms")[0]
    (row,) = [line.split(" | ") for line in main_table.splitlines() if line.startswith("| 3 | noise")]
    assert row[13:15] == ["20.0 (1 of 2 seeds)", "50.0 (1 of 2 seeds)"]
