"""Solve tracking: the episode and env step at which a client's 100-episode mean first reaches the target."""

from fedrl_app.reporting.solve import SolveTracker


def test_solve_episode_and_env_step_across_rounds():
    t = SolveTracker("lunarlander")  # target 200
    # partition 0: 50 episodes of return 0 (10 steps each), then return 300 (20 steps each). The window
    # ending at episode k (0-based) sums 15000 + 300·(k − 99) from k = 99, first ≥ 20000 at k = 116.
    returns, lengths = [0.0] * 50 + [300.0] * 90, [10] * 50 + [20] * 90
    assert t.add(1, 0, returns[:60], lengths[:60]) is None
    assert t.add(1, 1, [100.0] * 120, [5] * 120) is None  # partition 1 never gets there
    solve = t.add(2, 0, returns[60:], lengths[60:])
    assert (solve.partition_id, solve.episode, solve.env_step, solve.round) == (0, 117, 50 * 10 + 67 * 20, 2)
    assert t.add(3, 0, [0.0] * 200, [1] * 200) is None  # a solve is recorded once
    assert t.federation_round is None
    assert t.add(4, 1, [300.0] * 100, [5] * 100).round == 4
    assert t.federation_round == 4
    summary = t.summary()
    assert summary["federation-solved-round"] == 4 and summary["clients"]["0"]["episode"] == 117


def test_fewer_than_100_episodes_never_solve():
    t = SolveTracker("cartpole")
    assert t.add(1, 0, [500.0] * 99, [500] * 99) is None and t.federation_round is None
