"""Solve detection, per-client curves and the server's evaluation episodes, as the RL benchmarks read them."""

import numpy as np
import torch
from flwr.app import ArrayRecord

from benchmarks.lunarlander import client_curves
from fedrl_app.config import RunConfig
from fedrl_app.server.evaluation import central_evaluator, evaluation_seed
from fedrl_app.server.registry import task_model
from fedrl_app.tasks.gym_rl import evaluate_policy, moving_average_solved


def test_moving_average_solved_exact():
    assert moving_average_solved([0, 0, 300, 300, 300], threshold=200, window=3) == 3  # mean(0,300,300)=200
    assert moving_average_solved([0, 0, 300], threshold=200, window=3) is None
    assert moving_average_solved([250], threshold=200, window=3) is None  # too few episodes


def test_client_curves_accumulate_across_rounds():
    rows = [
        {"round": 2, "partition_id": 0, "episode_returns": [5.0], "episode_lengths": [30], "env_steps": 100,
         "act_flops": 10, "train_flops": 20},
        {"round": 1, "partition_id": 0, "episode_returns": [1.0, 2.0], "episode_lengths": [40, 50], "env_steps": 100,
         "act_flops": 1, "train_flops": 2},
    ]
    c = client_curves(rows)[0]
    assert c["returns"] == [1.0, 2.0, 5.0] and c["steps"] == 200
    assert c["end-steps"] == [40, 90, 130] and (c["act-flops"], c["train-flops"]) == (11, 22)


def _round(pid: int, rnd: int, returns: list[float], length: int = 10) -> dict:
    return {"round": rnd, "partition_id": pid, "episode_returns": returns, "episode_lengths": [length] * len(returns),
            "env_steps": length * len(returns), "act_flops": 1, "train_flops": 2}


def test_summarise_counts_per_client_and_federation_solves():
    from benchmarks.lunarlander import summarise

    # client 0: 200 episodes of 250 (solves at its 100th, step 1000); client 1: 100 of 0, then 500s: the
    # 100-episode mean reaches 200 with 40 of them, at its 140th episode, step 1400
    clients = [_round(0, 1, [250.0] * 100), _round(0, 2, [250.0] * 100),
               _round(1, 1, [0.0] * 100), _round(1, 2, [500.0] * 100)]
    s = summarise({"clients": clients, "metrics": []})
    assert s["clients-solved"] == 2
    assert s["solve-episode"] == [100, 140] and s["solve-steps-per-client"] == [1000, 1400]
    assert s["solve-steps-total"] == 2 * 1400  # both clients had stepped 1400 times when the last one solved
    assert s["solve-episodes-total"] == 140 + 140
    assert s["env-steps-total"] == 4000 and s["flops-per-episode"] == 4 * 3 / 400


def test_summarise_leaves_totals_open_when_a_client_never_solves():
    from benchmarks.lunarlander import summarise

    s = summarise({"clients": [_round(0, 1, [250.0] * 100), _round(1, 1, [0.0] * 100)], "metrics": []})
    assert s["clients-solved"] == 1
    assert s["solve-episode"] == [100, None] and s["solve-steps-per-client"] == [1000, None]
    assert s["solve-steps-total"] is None and s["solve-episodes-total"] is None


def test_plot_run_draws_client_returns_and_fusion_buffer(tmp_path):
    from fedrl_app.reporting.plots import plot_run

    rows = [{"round": r, "return": 10.0 * r, "uplink-bytes": 5, "downlink-bytes": 5, "uplink-bytes-total": 5 * r,
             "downlink-bytes-total": 5 * r, "global-buffer-size": 64 * r, "filter-acceptance": 0.5,
             "trust-weights": [0.0, 0.5, 0.5], "trust-partitions": [0, 1, 2]} for r in (1, 2)]
    clients = [_round(0, 1, [1.0, 2.0]), _round(0, 2, [3.0]), _round(1, 1, [4.0])]
    paths = plot_run(rows, tmp_path, clients)
    assert {p.name for p in paths} == {"return.png", "bytes.png", "client-returns.png", "fusion.png"}
    assert all(p.stat().st_size > 1000 for p in paths)
    fedavg_rows = [{k: v for k, v in r.items() if k not in ("global-buffer-size", "filter-acceptance", "trust-weights",
                                                              "trust-partitions")} for r in rows]
    assert {p.name for p in plot_run(fedavg_rows, tmp_path, [])} == {"return.png", "bytes.png"}


def test_mean_return_curve_averages_clients_at_each_step():
    import numpy as np

    from benchmarks.lunarlander import mean_return_curve

    # client 0: episodes of 10 steps returning 0, 1, 2, 3; client 1: returning 10 each
    run = {"clients": [_round(0, 1, [0.0, 1.0, 2.0, 3.0]), _round(1, 1, [10.0] * 4)]}
    curve = mean_return_curve(run, np.array([5, 20, 25, 40]), window=2)
    # at step 5 no client has two episodes; at 20 client 0's average is 0.5, at 40 it is 2.5
    assert np.isnan(curve[0]) and curve[1:].tolist() == [(0.5 + 10) / 2, (0.5 + 10) / 2, (2.5 + 10) / 2]


def test_server_solve_steps_needs_five_rounds_of_evaluation_at_the_target():
    from benchmarks.lunarlander import server_solve_steps

    returns = [-500, 100, 300, 150, 250, 200, 220, 400]  # rounds 0..7; round 0 (the initial network) is not counted
    rows = [{"round": r, "return": float(x)} for r, x in enumerate(returns)]
    # mean of rounds 1-5 = 200 -> reached at round 5, after 5 × 1000 steps per client
    assert server_solve_steps(rows, 1000) == 5000
    assert server_solve_steps(rows[:5], 1000) is None  # only four evaluated rounds
    assert server_solve_steps([{"round": r, "return": 199.0} for r in range(10)], 1000) is None


def test_greedy_summary_is_the_global_network_or_each_local_agent():
    from benchmarks.lunarlander import greedy_summary

    federated = {"metrics": [{"round": r, "return": 250.0} for r in range(7)], "clients": [], "steps-per-round": 500}
    assert greedy_summary(federated) == {"greedy-return": [250.0], "greedy-solve-steps": [5 * 500]}
    local = {"metrics": [], "steps-per-round": 1000, "clients": [
        {"round": r, "partition_id": pid, "greedy_return": 300.0 if pid == 0 else -50.0}
        for pid in (0, 1) for r in range(1, 7)]}
    assert greedy_summary(local) == {"greedy-return": [300.0, -50.0], "greedy-solve-steps": [5000, None]}


def test_greedy_curve_is_per_round():
    import math

    from benchmarks.lunarlander import greedy_curve

    assert greedy_curve({"metrics": [{"round": 0, "return": -100.0}, {"round": 1}], "clients": []})[0] == -100.0
    local = {"metrics": [], "clients": [{"round": r, "partition_id": p, "greedy_return": 10.0 * r + p}
                                        for r in (2, 1) for p in (0, 1)]}
    curve = greedy_curve(local)
    assert math.isnan(curve[0]) and curve[1:] == [10.5, 20.5]
    assert greedy_curve({"metrics": [], "clients": [{"round": 1, "partition_id": 0}]}) == []


def test_fusion_summary_counts_admitted_over_all_rounds():
    from benchmarks.lunarlander import fusion_summary

    metrics = [{"round": 0, "return": -100.0},
               {"round": 1, "experience-offered": 100, "experience-admitted": 100, "filter-acceptance": 1.0,
                "global-buffer-size": 100, "experience-raw-bytes": 1000, "experience-gzip-bytes": 600},
               {"round": 2, "experience-offered": 100, "experience-admitted": 50, "filter-acceptance": 0.5,
                "global-buffer-size": 150, "experience-raw-bytes": 1000, "experience-gzip-bytes": 400}]
    assert fusion_summary({"metrics": metrics}) == {"admitted": 0.75, "admitted-last": 0.5, "buffer": 150,
                                                    "gzip-ratio": 0.5}
    assert fusion_summary({"metrics": metrics[:1]})["admitted"] is None


def test_every_lunarlander_benchmark_method_is_a_valid_run_config():
    """A typo in a method's overrides must fail here, not an hour into a sweep."""
    from benchmarks.lunarlander import METHODS, TASK
    from fedrl_app.config import RunConfig

    for name, spec in METHODS.items():
        cfg = RunConfig.from_run_config({k: v for k, v in spec.items() if k != "local"} | {"task": TASK})
        assert cfg.agent == spec["agent"], name
        assert cfg.strategy == spec.get("strategy", RunConfig().strategy), name
    noserver = METHODS["fusion-double-noserver"] | {"task": TASK}
    assert RunConfig.from_run_config(noserver).server_updates_per_round == 0
    assert RunConfig.from_run_config(METHODS["fusion-double-tf1"] | {"task": TASK}).dqn_train_frequency == 1


def test_dynamics_finds_the_dip_and_the_td_loss_around_the_full_buffer():
    from benchmarks.lunarlander_dynamics import dynamics

    # greedy -100 everywhere except rounds 20-24 at -600 (the only 5-round window at -600 ends at round 24);
    # the buffer grows by 10 a round up to 300 (full at round 30); TD loss 2.0 before round 30, 1.0 after
    rows = [{"round": r, "return": -600.0 if 20 <= r <= 24 else -100.0, "global-buffer-size": min(10 * r, 300),
             "server-td-loss": 2.0 if r < 30 else 1.0} for r in range(1, 61)]
    d = dynamics(rows)
    assert (d["worst-greedy"], d["worst-round"], d["buffer-full"]) == (-600.0, 24, 30)
    assert (d["td-before"], d["td-after"]) == (2.0, 1.0)
    assert d["td-late"] == 1.0  # rounds 15..60: 15 values of 2.0 and 31 of 1.0


def test_trust_signals_lowest_share_splits_ties():
    from benchmarks.trust_signals import lowest_share
    assert lowest_share([-300.0, -100.0, -120.0], [0]) == 1.0
    assert lowest_share([-300.0, -100.0, -120.0], [1, 2]) == 0.0
    assert lowest_share([-5.0, -5.0, -5.0, 0.0], [0]) == 1 / 3  # identical networks: no one is singled out



def test_the_server_evaluates_other_start_states_each_round_the_same_ones_for_a_round():
    cfg = RunConfig.from_run_config({"task": "cartpole", "dqn-hidden": 8, "eval-episodes": 3, "seed": 4})
    seeds = {(s, r): evaluation_seed(s, r) for s in (1, 2, 3) for r in range(50)}
    assert len(set(seeds.values())) == len(seeds)  # no two (seed, round) pairs start from the same state
    torch.manual_seed(0)
    net = task_model(cfg)
    evaluate = central_evaluator(cfg, None)
    arrays = ArrayRecord(net.state_dict())
    first, again, later = evaluate(arrays, 1), evaluate(arrays, 1), evaluate(arrays, 2)
    assert first == again  # a round (and its resume) plays the same episodes
    assert first["return"] == float(np.mean(evaluate_policy(net, "cartpole", 3, seed=evaluation_seed(4, 1))))
    assert later["return"] != first["return"]  # the next round: other start states, another return
