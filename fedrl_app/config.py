"""Run configuration: the typed, validated view of `[tool.flwr.app.config]`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

TASKS = ("mnist", "cartpole", "lunarlander")
RL_TASKS = ("cartpole", "lunarlander")
AGENTS = ("dqn", "double", "dueling", "double-dueling")
STRATEGIES = ("fedavg", "fedprox", "scaffold", "fedadagrad", "drl-compress", "fusion", "fedmedian", "fedtrimmedavg", "krum", "fedpg", "lapg", "afedpg")
ASYNC_STRATEGIES = ("fedavg", "fedprox", "drl-compress")
PG_STRATEGIES = ("fedpg", "lapg", "afedpg")  # clients send policy-gradient estimates, not parameters
RL_STRATEGIES = ("fedavg", "fusion", *PG_STRATEGIES)
FAULT_MODES = ("", "raise", "hang")
BYZANTINE_ATTACKS = ("sign-flip", "scale", "nan", "wrong-shape", "pickle-exploit")  # the last three: malformed replies
SYNC_POLICIES = ("dqn", "compressed", "full")
CONTROLLER_REWARDS = ("own-gain", "global-gain")  # see fedrl_app.agents.sync_controller
DP_MODES = ("off", "server", "client")  # Flower's fixed-clipping DP wrappers: who clips the updates
DP_STRATEGIES = ("fedavg", "fedprox")  # the wrappers add noise to a plain (equal-weight) mean of full models
WANDB_MODES = ("offline", "online", "disabled")
TRACK_METRICS = ("", "accuracy", "loss", "return")


class ConfigError(ValueError):
    """A run-config value is missing, of the wrong type, or outside its allowed range."""


@dataclass(frozen=True)
class RunConfig:
    """Every run-config key, kebab-case in TOML, snake_case here.

    Field defaults mirror `pyproject.toml`, so a config missing a key still runs.
    """

    task: str = "mnist"
    strategy: str = "fedavg"
    num_server_rounds: int = 10
    fraction_train: float = 1.0
    fraction_evaluate: float = 0.5
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.0
    lr_decay_factor: float = 0.5
    lr_decay_every: int = 5
    proximal_mu: float = 0.01
    server_lr: float = 0.01
    adagrad_tau: float = 0.001
    bytes_penalty: float = 0.1
    sync_policy: str = "dqn"
    controller_reward: str = "own-gain"
    async_aggregation: bool = False
    buffer_size: int = 5
    staleness_exponent: float = 0.5
    speed_sigma: float = 1.0
    clustering: bool = False
    cluster_every: int = 5
    max_clusters: int = 4
    prune_threshold: float = 0.0
    dirichlet_alpha: float = 0.3
    seed: int = 42
    data_path: str = ""
    local_test_fraction: float = 0.1
    max_client_examples: int = 0
    eval_batch_size: int = 1000
    round_timeout: float = 600.0
    track_metric: str = ""
    agent: str = "dqn"
    steps_per_round: int = 1000
    eval_episodes: int = 5
    dqn_hidden: int = 256
    dqn_learning_starts: int = 1000
    dqn_epsilon_decay_steps: int = 20000
    dqn_batch_size: int = 128
    dqn_train_frequency: int = 4
    dqn_target_update_every: int = 250
    fusion_mix: float = 0.5
    diversity_filter: bool = True
    diversity_threshold: float = 0.15
    filter_k: int = 16
    server_updates_per_round: int = 100
    server_buffer_size: int = 50000
    experience_sample: int = 256
    pg_lr: float = 0.001
    pg_batch_episodes: int = 10
    pg_hidden: int = 64
    pg_gamma: float = 0.99
    lapg_threshold: float = 1.0
    lapg_memory: int = 10
    afedpg_step_size: float = 0.1
    afedpg_eta_exponent: float = 0.5
    afedpg_delay_adaptive: bool = True
    afedpg_step_exponent: float = 0.0
    outputs_dir: str = ""
    resume_from: str = ""
    byzantine_fraction: float = 0.0
    byzantine_attack: str = "sign-flip"
    byzantine_scale: float = 10.0
    trimmed_beta: float = 0.2
    krum_malicious: int = 0
    dp_mode: str = "off"
    dp_noise_multiplier: float = 1.0
    dp_clipping_norm: float = 1.0
    dp_target_delta: float = 1e-5
    fault_mode: str = ""
    fault_partition: int = -1
    fault_round: int = 0
    fault_hang_s: float = 30.0
    wandb_mode: str = "offline"
    wandb_project: str = "fedrl"

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """Build and validate a RunConfig from Flower's `context.run_config`.

        Raises
        ------
        ConfigError
            Naming the offending key and what it accepts.
        """
        known = {f.name.replace("_", "-"): f for f in fields(cls)}
        unknown = sorted(set(run_config) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown config key(s) {unknown}; known keys: {sorted(known)}"
            )
        values: dict[str, Any] = {}
        for key, value in run_config.items():
            field = known[key]
            values[field.name] = _coerce(key, value, field.type)
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Check ranges and choices; raise ConfigError naming the key."""
        _choice("task", self.task, TASKS)
        _choice("strategy", self.strategy, STRATEGIES)
        _choice("wandb-mode", self.wandb_mode, WANDB_MODES)
        _choice("track-metric", self.track_metric, TRACK_METRICS)
        _choice("agent", self.agent, AGENTS)
        for key in ("steps-per-round", "eval-episodes", "dqn-hidden", "dqn-batch-size", "dqn-train-frequency",
                    "dqn-target-update-every"):
            _at_least(key, getattr(self, key.replace("-", "_")), 1)
        _at_least("dqn-learning-starts", self.dqn_learning_starts, 0)
        _at_least("filter-k", self.filter_k, 1)
        _at_least("server-updates-per-round", self.server_updates_per_round, 0)
        _at_least("server-buffer-size", self.server_buffer_size, 1)
        _at_least("experience-sample", self.experience_sample, 0)
        _in_range("fusion-mix", self.fusion_mix, 0.0, 1.0, high_open=True)
        if self.diversity_threshold < 0:
            raise ConfigError(f"config key 'diversity-threshold' must be >= 0, got {self.diversity_threshold!r}")
        if self.strategy in ("fusion", *PG_STRATEGIES) and self.task not in RL_TASKS:
            raise ConfigError(f"config key 'strategy' is {self.strategy!r}, which needs task in {list(RL_TASKS)}")
        for key in ("pg-batch-episodes", "pg-hidden", "lapg-memory"):
            _at_least(key, getattr(self, key.replace("-", "_")), 1)
        _in_range("pg-gamma", self.pg_gamma, 0.0, 1.0, low_open=True)
        _in_range("afedpg-eta-exponent", self.afedpg_eta_exponent, 0.0, 1.0)
        _in_range("afedpg-step-exponent", self.afedpg_step_exponent, 0.0, 1.0)
        if self.lapg_threshold < 0:
            raise ConfigError(f"config key 'lapg-threshold' must be >= 0, got {self.lapg_threshold!r}")
        _at_least("dqn-epsilon-decay-steps", self.dqn_epsilon_decay_steps, 1)
        if self.task in RL_TASKS and self.strategy not in RL_STRATEGIES:
            raise ConfigError(f"config key 'strategy' is {self.strategy!r}; with task {self.task!r} allowed values: "
                              f"{list(RL_STRATEGIES)}")
        _choice("sync-policy", self.sync_policy, SYNC_POLICIES)
        _choice("controller-reward", self.controller_reward, CONTROLLER_REWARDS)
        _choice("fault-mode", self.fault_mode, FAULT_MODES)
        _choice("dp-mode", self.dp_mode, DP_MODES)
        if self.dp_mode != "off" and (self.strategy not in DP_STRATEGIES or self.async_aggregation or self.clustering):
            raise ConfigError(f"config key 'dp-mode' is {self.dp_mode!r}, which works with synchronous, unclustered "
                              f"strategy in {list(DP_STRATEGIES)} (got strategy={self.strategy!r}, "
                              f"async-aggregation={self.async_aggregation}, clustering={self.clustering})")
        if self.dp_noise_multiplier < 0:
            raise ConfigError(f"config key 'dp-noise-multiplier' must be >= 0, got {self.dp_noise_multiplier!r}")
        _in_range("dp-target-delta", self.dp_target_delta, 0.0, 1.0, low_open=True, high_open=True)
        _choice("byzantine-attack", self.byzantine_attack, BYZANTINE_ATTACKS)
        _in_range("byzantine-fraction", self.byzantine_fraction, 0.0, 1.0)
        _in_range("trimmed-beta", self.trimmed_beta, 0.0, 0.5, high_open=True)
        _at_least("krum-malicious", self.krum_malicious, 0)
        _at_least("fault-round", self.fault_round, 0)
        _at_least("num-server-rounds", self.num_server_rounds, 1)
        _at_least("local-epochs", self.local_epochs, 1)
        _at_least("batch-size", self.batch_size, 1)
        _at_least("eval-batch-size", self.eval_batch_size, 1)
        _at_least("lr-decay-every", self.lr_decay_every, 1)
        _at_least("max-client-examples", self.max_client_examples, 0)
        _at_least("buffer-size", self.buffer_size, 1)
        _at_least("cluster-every", self.cluster_every, 1)
        _at_least("max-clusters", self.max_clusters, 2)
        if self.clustering and (self.async_aggregation or self.strategy not in ASYNC_STRATEGIES):
            raise ConfigError(f"config key 'clustering' works with synchronous strategy in {list(ASYNC_STRATEGIES)}"
                              f" (got strategy={self.strategy!r}, async-aggregation={self.async_aggregation})")
        for key, value in (("staleness-exponent", self.staleness_exponent), ("speed-sigma", self.speed_sigma)):
            if value < 0:
                raise ConfigError(f"config key '{key}' must be >= 0, got {value!r}")
        if self.async_aggregation and self.strategy not in ASYNC_STRATEGIES:
            raise ConfigError(f"config key 'async-aggregation' works with strategy in {list(ASYNC_STRATEGIES)}, "
                              f"not {self.strategy!r}")
        _in_range("fraction-train", self.fraction_train, 0.0, 1.0, low_open=True)
        _in_range("fraction-evaluate", self.fraction_evaluate, 0.0, 1.0)
        _in_range("lr-decay-factor", self.lr_decay_factor, 0.0, 1.0, low_open=True)
        _in_range("momentum", self.momentum, 0.0, 1.0, high_open=True)
        _in_range("local-test-fraction", self.local_test_fraction, 0.0, 0.9, low_open=True)
        for key, value in (
            ("lr", self.lr),
            ("server-lr", self.server_lr),
            ("adagrad-tau", self.adagrad_tau),
            ("dirichlet-alpha", self.dirichlet_alpha),
            ("round-timeout", self.round_timeout),
            ("pg-lr", self.pg_lr),
            ("afedpg-step-size", self.afedpg_step_size),
            ("dp-clipping-norm", self.dp_clipping_norm),
        ):
            if not value > 0:
                raise ConfigError(f"config key '{key}' must be > 0, got {value!r}")
        for key, value in (("bytes-penalty", self.bytes_penalty), ("prune-threshold", self.prune_threshold)):
            if value < 0:
                raise ConfigError(f"config key '{key}' must be >= 0, got {value!r}")
        if self.proximal_mu < 0:
            raise ConfigError(f"config key 'proximal-mu' must be >= 0, got {self.proximal_mu!r}")
        if self.strategy == "scaffold" and self.momentum != 0.0:
            raise ConfigError(
                "config key 'momentum' must be 0.0 with strategy='scaffold': the "
                "SCAFFOLD control-variate update (option II) assumes plain SGD steps"
            )

    @property
    def tracked_metric(self) -> str:
        """The metric the best checkpoint follows: 'track-metric', or the task's natural one."""
        return self.track_metric or ("return" if self.task in RL_TASKS else "accuracy")

    def as_dict(self) -> dict[str, Any]:
        """Kebab-case dict, as in pyproject.toml (for JSON and W&B)."""
        return {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items()}


def lr_at_round(lr: float, decay_factor: float, decay_every: int, server_round: int) -> float:
    """Step-decayed learning rate for a round: lr * factor ** (round // every)."""
    return lr * decay_factor ** (server_round // decay_every)


def _coerce(key: str, value: Any, type_name: Any) -> Any:
    type_name = type_name if isinstance(type_name, str) else type_name.__name__
    if type_name == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if type_name == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if type_name == "str":
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return value
    if type_name == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    raise AssertionError(f"unsupported field type {type_name} for {key}")


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"config key '{key}' is {value!r}; allowed values: {list(allowed)}")


def _at_least(key: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"config key '{key}' must be >= {low}, got {value!r}")


def _in_range(
    key: str, value: float, low: float, high: float, low_open: bool = False, high_open: bool = False
) -> None:
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ConfigError(f"config key '{key}' must be in {lo}{low}, {high}{hi}, got {value!r}")
