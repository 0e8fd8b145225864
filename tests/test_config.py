"""Run config validation, the strategy registry's checks, the LR schedule, and that config, pyproject and docs agree."""

import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from fedrl_app.config import ConfigError, RunConfig, key_of
from fedrl_app.runtime.paths import find_mnist_dir
from fedrl_app.server import config_docs
from fedrl_app.server.registry import STRATEGIES, WRAPPERS, build_strategy, client_role, parse_config, task_model
from fedrl_app.tasks.mnist import resolve_source
from strategies.round_schedule import lr_at_round

ROOT = Path(__file__).resolve().parent.parent


def test_lr_schedule_exact_values():
    assert [lr_at_round(0.1, 0.5, 5, r) for r in (1, 4, 5, 9, 10, 15)] == [0.1, 0.1, 0.05, 0.05, 0.025, 0.0125]


def test_pyproject_has_every_key_with_its_default_in_field_order():
    app_config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert list(app_config) == [key_of(f) for f in fields(RunConfig)]
    assert RunConfig.from_run_config(app_config) == RunConfig()
    parse_config(app_config)  # and the registry accepts the defaults


def test_every_field_documents_itself():
    for f in fields(RunConfig):
        assert f.metadata["help"] and f.metadata["group"], key_of(f)


def test_docs_and_readme_strategy_table_are_generated_from_the_code():
    assert config_docs.main(["--check"]) == 0, "run: python -m fedrl_app.server.config_docs"
    docs = (ROOT / "docs" / "configuration.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for f in fields(RunConfig):
        assert f"| `{key_of(f)}` |" in docs, key_of(f)
    for name in STRATEGIES:
        assert f"| `{name}` |" in docs and f"| `{name}` |" in readme, name


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_registered_strategy_builds_for_each_task_it_names(name):
    for task in STRATEGIES[name].tasks:
        cfg = parse_config({"strategy": name, "task": task})
        strategy = build_strategy(cfg)
        assert strategy.state_dict() == {} or isinstance(strategy.state_dict(), dict)
        assert client_role(cfg) in ("supervised", "sync-controller", "dqn", "policy-gradient")
        assert sum(p.numel() for p in task_model(cfg).parameters()) > 0


@pytest.mark.parametrize("wrapper", WRAPPERS, ids=lambda w: w.name)
def test_every_wrapper_builds_around_every_strategy_that_lists_it(wrapper):
    on = {"clustering": {"clustering": True}, "async": {"async-aggregation": True}, "dp": {"dp-mode": "server"}}
    names = [e.name for e in STRATEGIES.values() if wrapper.name in e.wrappers]
    assert names, wrapper.name
    for name in names:
        built = build_strategy(parse_config({"strategy": name, **on[wrapper.name]}))
        assert isinstance(built, wrapper.cls) and built.strategy.min_train_nodes >= 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"strategy": "fedsgdx"}, r"'strategy' is 'fedsgdx'; allowed values: \['fedavg', 'fedprox', 'scaffold', 'fedadagrad', 'drl-compress', 'fedmedian', 'fedtrimmedavg', 'krum', 'fusion', 'fedpg', 'lapg', 'afedpg'\]"),
        ({"task": "cifar"}, r"'task' is 'cifar'; allowed values: \['mnist', 'cartpole', 'lunarlander'\]"),
        ({"task": "cartpole", "strategy": "scaffold"}, r"which needs task in \['mnist'\]; with task 'cartpole' allowed values: \['fedavg', 'fusion', 'fedpg', 'lapg', 'afedpg'\]"),
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
        ({"mnist-width": 9}, r"'mnist-width' must be in \[1, 8\]"),
        ({"task": "cartpole", "local-work": "samples"}, r"'local-work' = 'samples' applies to task 'mnist'"),
        ({"strategy": "scaffold", "momentum": 0.9}, r"'momentum' must be 0.0 with strategy='scaffold'"),
    ],
)
def test_bad_config_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(override)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"clustering": True, "async-aggregation": True},
         r"config keys 'clustering' and 'async-aggregation' cannot be combined \(got clustering=True, "
         r"async-aggregation=True\)"),
        ({"strategy": "scaffold", "clustering": True}, r"'clustering' works with strategy in \['fedavg', 'fedprox', "
                                                       r"'drl-compress'\], not 'scaffold'"),
        ({"strategy": "drl-compress", "dp-mode": "client"}, r"'dp-mode' works with strategy in \['fedavg', 'fedprox'\]"),
    ],
)
def test_the_registry_refuses_unsupported_wrapper_combinations_naming_the_keys(override, message):
    RunConfig.from_run_config(override)  # each key alone is a valid value...
    with pytest.raises(ConfigError, match=message):
        parse_config(override)  # ...the registry refuses the combination


def test_missing_data_path_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="config key 'data-path'"):
        find_mnist_dir(str(tmp_path / "nowhere"))


def test_shipped_data_is_found_and_hub_ids_pass_through():
    assert resolve_source("").dataset == "parquet"
    assert (find_mnist_dir() / "train.parquet").is_file()
    assert resolve_source("ylecun/mnist").dataset == "ylecun/mnist"


def test_the_dqn_keys_reach_the_agent_and_default_to_its_own_defaults():
    from dataclasses import asdict

    from fedrl_app.agents.dqn import DQNConfig

    cfg = RunConfig()
    diff = {k: v for k, v in asdict(cfg.dqn_config()).items() if v != asdict(DQNConfig.for_agent(cfg.agent))[k]}
    assert diff == {"train_frequency": 1, "n_step": 3}  # the defaults the run config changed (measured, issue 15)
    tuned = RunConfig.from_run_config({"task": "lunarlander", "dqn-tau": 0.005, "dqn-learning-rate": 1e-3,
                                       "dqn-max-grad-norm": 1.0, "dqn-buffer-size": 100_000,
                                       "dqn-n-step": 5}).dqn_config()
    assert (tuned.tau, tuned.learning_rate, tuned.max_grad_norm, tuned.buffer_size, tuned.n_step) == (
        0.005, 1e-3, 1.0, 100_000, 5)
    with pytest.raises(ConfigError, match="dqn-n-step"):
        RunConfig.from_run_config({"dqn-n-step": 0})


def test_the_fusion_choices_agree_with_the_strategy():
    # the config sits below the strategies and cannot import their tuples, so each keeps its own copy
    from fedrl_app import config
    from strategies import fusion

    assert (config.TRUST_RULES, config.TRUST_CLIPS, config.TRUST_WEIGHTINGS, config.DIVERSITY_MEASURES,
            config.FUSION_DEPLOYS) == (fusion.TRUST_RULES, fusion.TRUST_CLIPS, fusion.TRUST_WEIGHTINGS,
                                       fusion.DIVERSITY_MEASURES, fusion.FUSION_DEPLOYS)


def test_the_fusion_trust_keys_reach_the_strategy():
    built = build_strategy(parse_config({"strategy": "fusion", "task": "cartpole", "trust-clip": "median-norm",
                                         "trust-weighting": "gate"}))
    assert (built.trust_clip, built.trust_weighting) == ("median-norm", "gate")
    with pytest.raises(ConfigError, match="trust-weighting"):
        parse_config({"strategy": "fusion", "task": "cartpole", "trust-weighting": "softmax"})
