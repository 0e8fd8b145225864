"""Run config validation and the LR schedule."""

import pytest

from fedrl_app.config import ConfigError, RunConfig, lr_at_round
from fedrl_app.paths import find_mnist_dir
from fedrl_app.tasks.mnist import resolve_source


def test_lr_schedule_exact_values():
    assert [lr_at_round(0.1, 0.5, 5, r) for r in (1, 4, 5, 9, 10, 15)] == [0.1, 0.1, 0.05, 0.05, 0.025, 0.0125]


def test_defaults_match_pyproject():
    import tomllib
    from pathlib import Path

    toml = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    app_config = toml["tool"]["flwr"]["app"]["config"]
    assert RunConfig.from_run_config(app_config) == RunConfig()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"strategy": "fedsgdx"}, r"'strategy' is 'fedsgdx'; allowed values: \['fedavg', 'fedprox', 'scaffold', 'fedadagrad', 'drl-compress', 'fusion', 'fedmedian', 'fedtrimmedavg', 'krum', 'fedpg', 'lapg', 'afedpg'\]"),
        ({"task": "cifar"}, r"'task' is 'cifar'; allowed values: \['mnist', 'cartpole', 'lunarlander'\]"),
        ({"task": "cartpole", "strategy": "scaffold"}, r"with task 'cartpole' allowed values: \['fedavg', 'fusion', 'fedpg', 'lapg', 'afedpg'\]"),
        ({"strategy": "lapg"}, r"'strategy' is 'lapg', which needs task in \['cartpole', 'lunarlander'\]"),
        ({"task": "cartpole", "strategy": "fedpg", "async-aggregation": True}, r"'async-aggregation' works with strategy in"),
        ({"pg-lr": 0.0}, r"'pg-lr' must be > 0"),
        ({"pg-batch-episodes": 0}, r"'pg-batch-episodes' must be >= 1, got 0"),
        ({"pg-gamma": 1.5}, r"'pg-gamma' must be in \(0.0, 1.0\]"),
        ({"lapg-threshold": -1.0}, r"'lapg-threshold' must be >= 0"),
        ({"lapg-memory": 0}, r"'lapg-memory' must be >= 1"),
        ({"afedpg-step-size": -0.1}, r"'afedpg-step-size' must be > 0"),
        ({"afedpg-eta-exponent": 2.0}, r"'afedpg-eta-exponent' must be in \[0.0, 1.0\]"),
        ({"afedpg-step-exponent": -0.5}, r"'afedpg-step-exponent' must be in \[0.0, 1.0\]"),
        ({"afedpg-delay-adaptive": 1}, r"'afedpg-delay-adaptive' must be true or false"),
        ({"agent": "rainbow"}, r"'agent' is 'rainbow'; allowed values"),
        ({"num-server-rounds": -3}, r"'num-server-rounds' must be >= 1, got -3"),
        ({"num-server-rounds": "ten"}, r"'num-server-rounds' must be an integer"),
        ({"fraction-train": 0.0}, r"'fraction-train' must be in \(0.0, 1.0\]"),
        ({"lr": -0.1}, r"'lr' must be > 0"),
        ({"nonsense-key": 1}, r"unknown config key\(s\) \['nonsense-key'\]"),
        ({"strategy": "scaffold", "momentum": 0.9}, r"'momentum' must be 0.0 with strategy='scaffold'"),
    ],
)
def test_bad_config_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_run_config(override)


def test_missing_data_path_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="config key 'data-path'"):
        find_mnist_dir(str(tmp_path / "nowhere"))


def test_shipped_data_is_found_and_hub_ids_pass_through():
    assert resolve_source("").dataset == "parquet"
    assert (find_mnist_dir() / "train.parquet").is_file()
    assert resolve_source("ylecun/mnist").dataset == "ylecun/mnist"
