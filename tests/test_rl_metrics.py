"""Solve detection and per-client curves used by the RL benchmark."""

from benchmarks.lunarlander import client_curves
from fedrl_app.tasks.gym_rl import moving_average_solved


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
