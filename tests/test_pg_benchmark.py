"""Policy-gradient benchmark: AFedPG's round-equivalent x axis, uploads per round, summaries."""

import numpy as np

from benchmarks.policy_gradient import curve, mean_curve, run_config, summarise, uploads_per_round


def _run(method, n, returns, uploads):
    rows = [{"round": 0, "return": returns[0], "uplink-bytes-total": 0}]
    for r, (ret, up) in enumerate(zip(returns[1:], uploads), start=1):
        rows.append({"round": r, "return": ret, "uploads": up, "env-steps-total": 100 * r, "sim-time": 2.0 * r,
                     "uplink-bytes-total": 1000 * r, "uploads-saved-total": r - up if method == "lapg" else 0})
    return {"method": method, "n": n, "metrics": rows, "wall-s": 5.0}


def test_afedpg_updates_count_as_rounds_of_n():
    run = _run("afedpg", 2, [9.0, 10.0, 20.0, 500.0, 480.0], [1, 1, 1, 1])
    np.testing.assert_allclose(curve(run)["round"], [0, 0.5, 1.0, 1.5, 2.0])
    np.testing.assert_array_equal(uploads_per_round(run), [2, 2])
    s = summarise(run)
    assert s["rounds-to-target"] == 1.5 and s["env-steps-to-target"] == 300 and s["sim-time-to-target"] == 6.0
    assert s["best-return"] == 500.0 and s["final-return"] == 480.0 and s["uploads"] == 4
    assert run_config("afedpg", 4, 1, 10, 5, 3)["num-server-rounds"] == 40
    assert run_config("lapg", 4, 1, 10, 5, 3)["num-server-rounds"] == 10


def test_lapg_summary_counts_skips_and_target_not_reached():
    s = summarise(_run("lapg", 3, [9.0, 30.0, 40.0], [3, 1]))
    assert s["rounds-to-target"] is None and s["uploads"] == 4 and s["uploads-saved"] == 1
    assert s["uplink-mb"] == 0.002


def test_mean_curve_interpolates_to_the_shortest_run():
    grid, mean = mean_curve([np.array([0.0, 2.0]), np.array([0.0, 1.0, 4.0])],
                            [np.array([0.0, 2.0]), np.array([10.0, 20.0, 50.0])], points=3)
    np.testing.assert_allclose(grid, [0, 1, 2])
    np.testing.assert_allclose(mean, [(0 + 10) / 2, (1 + 20) / 2, (2 + 30) / 2])
