"""The strategy registry: one entry per strategy, and the wrappers that compose around them.

Everything that depends on which strategy runs derives from these two tables: config validation
(`check_config`), building the strategy (`build_strategy`), the client role the ServerApp sends
(`client_role`), the network the federation trains (`task_model`), and the strategy table of
`docs/configuration.md` and the README. Adding a strategy is one file in `strategies/`, one
`StrategyEntry` below, and its tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from flwr.serverapp.strategy import Strategy

from fedrl_app.agents.dqn import QNetwork
from fedrl_app.agents.policy_gradient import PolicyNetwork
from fedrl_app.config import RL_ONLY_ATTACKS, RL_TASKS, TASKS, ConfigError, RunConfig
from fedrl_app.protocol import keys
from fedrl_app.systems.profiles import ProfileError, systems_model
from fedrl_app.tasks import mnist
from fedrl_app.tasks.gym_rl import env_dims
from strategies import (
    LAPG,
    AFedPG,
    AsyncBuffer,
    ClientSideDP,
    Clustered,
    DrlCompress,
    FedAdagrad,
    FedAvg,
    FedMedian,
    FedPG,
    FedProx,
    FedTrimmedAvg,
    Fusion,
    Krum,
    Scaffold,
    ServerSideDP,
)
from strategies.wrapper import CheckedStrategy, WrapsStrategy, innermost

MNIST_ONLY = ("mnist",)
ANY_TASK = TASKS
DEFAULT_ROLE = {"mnist": keys.ROLE_SUPERVISED, "cartpole": keys.ROLE_DQN, "lunarlander": keys.ROLE_DQN}

Builder = Callable[[RunConfig, dict[str, Any]], CheckedStrategy]


@dataclass(frozen=True)
class StrategyEntry:
    """One strategy: how to build it from the config, and what it works with.

    Attributes
    ----------
    name : str
        The `strategy` config value.
    summary : str
        One line for the docs.
    build : Builder
        (cfg, settings) -> the strategy; `settings` holds Flower's sampling arguments
        (`fraction_train`, `fraction_evaluate`, and whatever the enabled wrappers require).
    tasks : tuple[str, ...]
        Tasks it supports.
    wrappers : tuple[str, ...]
        Names of the `WRAPPERS` it composes with.
    role : str or None
        The client role it needs (`fedrl_app.protocol.keys.ROLES`); None: the task's default.
    trains_policy : bool
        The federation trains the policy network (policy gradient), not the task's network.
    lr_schedule : bool
        Attach the clients' `lr` decay schedule (False where the strategy sets its own step).
    check : callable, optional
        Cross-key rules of this strategy; raises ConfigError naming the keys.
    """

    name: str
    summary: str
    build: Builder
    tasks: tuple[str, ...] = MNIST_ONLY
    wrappers: tuple[str, ...] = ()
    role: str | None = None
    trains_policy: bool = False
    lr_schedule: bool = True
    check: Callable[[RunConfig], None] | None = None


@dataclass(frozen=True)
class WrapperEntry:
    """A wrapper that composes around a strategy (a `strategies.wrapper.WrapsStrategy`).

    Attributes
    ----------
    name : str
        Its name in `StrategyEntry.wrappers`.
    keys : tuple[str, ...]
        The config keys that turn it on (named in error messages).
    enabled : callable
        Whether the config turns it on.
    wrap : callable
        (strategy, cfg) -> the wrapped strategy.
    cls : type
        The wrapper class, whose `required_settings` the wrapped strategy is built with.
    composes_with : tuple[str, ...]
        Other wrappers it may be combined with (applied in `WRAPPERS` order).
    """

    name: str
    keys: tuple[str, ...]
    enabled: Callable[[RunConfig], bool]
    wrap: Callable[[CheckedStrategy, RunConfig], Strategy]
    cls: type[WrapsStrategy]
    composes_with: tuple[str, ...] = ()


def _scaffold_check(cfg: RunConfig) -> None:
    if cfg.momentum != 0.0:
        raise ConfigError("config key 'momentum' must be 0.0 with strategy='scaffold': the SCAFFOLD control-variate "
                          "update (option II) assumes plain SGD steps")


def _fusion(cfg: RunConfig, settings: dict[str, Any]) -> Fusion:
    obs_dim, n_actions = env_dims(cfg.task)
    # the server learner is the clients' agent, except for the size of its (global) replay buffer
    server_agent = replace(cfg.dqn_config(), buffer_size=cfg.server_buffer_size)
    return Fusion(**settings, obs_dim=obs_dim, n_actions=n_actions, agent_config=server_agent, mix=cfg.fusion_mix,
                  diversity_filter=cfg.diversity_filter, diversity_threshold=cfg.diversity_threshold,
                  filter_k=cfg.filter_k, server_updates=cfg.server_updates_per_round, trust=cfg.trust,
                  diversity_space=cfg.diversity_space, max_shared_per_client=cfg.experience_sample, td_probe=cfg.trust_td_probe,
                  learner_restart=cfg.server_learner_restart, diversity_measure=cfg.diversity_measure,
                  deploy=cfg.fusion_deploy, trust_clip=cfg.trust_clip, trust_weighting=cfg.trust_weighting,
                  seed=cfg.seed)


def _pg_clock(cfg: RunConfig) -> dict[str, Any]:
    return {"seed": cfg.seed}


SYNC_WRAPPERS = ("clustering", "async")

STRATEGY_ENTRIES = (
    StrategyEntry("fedavg", "Federated Averaging, weighted by examples (McMahan et al. 2017)",
                  lambda cfg, s: FedAvg(**s), tasks=ANY_TASK, wrappers=(*SYNC_WRAPPERS, "dp")),
    StrategyEntry("fedprox", "FedAvg with a proximal term μ/2·‖w − w_global‖² at the clients (Li et al. 2020)",
                  lambda cfg, s: FedProx(**s, proximal_mu=cfg.proximal_mu), wrappers=(*SYNC_WRAPPERS, "dp")),
    StrategyEntry("scaffold", "control variates correct client drift (Karimireddy et al. 2020)",
                  lambda cfg, s: Scaffold(**s), check=_scaffold_check),
    StrategyEntry("fedadagrad", "adaptive server optimiser (Reddi et al. 2021)",
                  lambda cfg, s: FedAdagrad(**s, eta=cfg.server_lr, eta_l=cfg.lr, tau=cfg.adagrad_tau)),
    StrategyEntry("drl-compress", "per-client DQN controllers choose full / compressed (top-k + int8) / skip",
                  lambda cfg, s: DrlCompress(**s, bytes_penalty=cfg.bytes_penalty,
                                             prune_threshold=cfg.prune_threshold, num_rounds=cfg.num_server_rounds,
                                             sync_policy=cfg.sync_policy, controller_reward=cfg.controller_reward,
                                             update_aggregation=cfg.update_aggregation, trimmed_beta=cfg.trimmed_beta,
                                             shared_controller=(cfg.controller_config()
                                                                if cfg.controller_sharing == "shared" else None),
                                             seed=cfg.seed),
                  wrappers=SYNC_WRAPPERS, role=keys.ROLE_SYNC_CONTROLLER),
    StrategyEntry("fedmedian", "coordinate-wise median (Yin et al. 2018)", lambda cfg, s: FedMedian(**s)),
    StrategyEntry("fedtrimmedavg", "coordinate-wise trimmed mean, `trimmed-beta` cut at each end",
                  lambda cfg, s: FedTrimmedAvg(**s, beta=cfg.trimmed_beta)),
    StrategyEntry("krum", "the update closest to its n − f − 2 neighbours (Blanchard et al. 2017)",
                  lambda cfg, s: Krum(**s, num_malicious_nodes=cfg.krum_malicious)),
    StrategyEntry("fusion", "trust-aware mix, shared experience behind a diversity filter, a learning server",
                  _fusion, tasks=RL_TASKS),
    StrategyEntry("fedpg", "synchronous federated policy gradient: ascend on the mean gradient",
                  lambda cfg, s: FedPG(**s, **_pg_clock(cfg), lr=cfg.pg_lr), tasks=RL_TASKS,
                  role=keys.ROLE_POLICY_GRADIENT, trains_policy=True, lr_schedule=False),
    StrategyEntry("lapg", "lazily aggregated policy gradient: clients skip uploads that would change little",
                  lambda cfg, s: LAPG(**s, **_pg_clock(cfg), lr=cfg.pg_lr, threshold=cfg.lapg_threshold,
                                      memory=cfg.lapg_memory),
                  tasks=RL_TASKS, role=keys.ROLE_POLICY_GRADIENT, trains_policy=True, lr_schedule=False),
    StrategyEntry("afedpg", "asynchronous policy gradient with a lookahead point and normalised steps",
                  lambda cfg, s: AFedPG(FedPG(**s, **_pg_clock(cfg), lr=cfg.pg_lr), **_pg_clock(cfg),
                                        step_size=cfg.afedpg_step_size, eta_exponent=cfg.afedpg_eta_exponent,
                                        delay_adaptive=cfg.afedpg_delay_adaptive,
                                        step_exponent=cfg.afedpg_step_exponent),
                  tasks=RL_TASKS, role=keys.ROLE_POLICY_GRADIENT, trains_policy=True, lr_schedule=False),
)
STRATEGIES: dict[str, StrategyEntry] = {e.name: e for e in STRATEGY_ENTRIES}

WRAPPERS = (  # applied in this order
    WrapperEntry("clustering", ("clustering",), lambda cfg: cfg.clustering,
                 lambda s, cfg: Clustered(s, cluster_every=cfg.cluster_every, max_clusters=cfg.max_clusters,
                                          seed=cfg.seed), Clustered),
    WrapperEntry("async", ("async-aggregation",), lambda cfg: cfg.async_aggregation,
                 lambda s, cfg: AsyncBuffer(s, buffer_size=cfg.buffer_size, staleness_exponent=cfg.staleness_exponent,
                                            seed=cfg.seed), AsyncBuffer),
    WrapperEntry("dp", ("dp-mode",), lambda cfg: cfg.dp_mode != "off",
                 lambda s, cfg: (ServerSideDP if cfg.dp_mode == "server" else ClientSideDP)(
                     s, cfg.dp_noise_multiplier, cfg.dp_clipping_norm, target_delta=cfg.dp_target_delta),
                 ServerSideDP),
)


def _names(strategies) -> list[str]:
    return [e.name for e in strategies]


def _wrapper_setting(cfg: RunConfig, wrapper: WrapperEntry) -> str:
    return ", ".join(f"{k}={cfg.as_dict()[k]!r}" for k in wrapper.keys)


def check_config(cfg: RunConfig) -> StrategyEntry:
    """The entry of `cfg.strategy`, after checking the task, the wrappers and the strategy's own rules.

    Raises
    ------
    ConfigError
        Naming the keys whose combination is not supported, and what would be.
    """
    entry = STRATEGIES.get(cfg.strategy)
    if entry is None:
        raise ConfigError(f"config key 'strategy' is {cfg.strategy!r}; allowed values: {list(STRATEGIES)}")
    if cfg.task not in entry.tasks:
        raise ConfigError(f"config key 'strategy' is {cfg.strategy!r}, which needs task in {list(entry.tasks)}; "
                          f"with task {cfg.task!r} allowed values: "
                          f"{_names(e for e in STRATEGY_ENTRIES if cfg.task in e.tasks)}")
    enabled = [w for w in WRAPPERS if w.enabled(cfg)]
    for wrapper in enabled:
        if wrapper.name not in entry.wrappers:
            supported = _names(e for e in STRATEGY_ENTRIES if wrapper.name in e.wrappers)
            raise ConfigError(f"config key '{wrapper.keys[0]}' works with strategy in {supported}, not "
                              f"{cfg.strategy!r} (got {_wrapper_setting(cfg, wrapper)})")
    for i, first in enumerate(enabled):
        for second in enabled[i + 1:]:
            if second.name not in first.composes_with:
                raise ConfigError(f"config keys '{first.keys[0]}' and '{second.keys[0]}' cannot be combined "
                                  f"(got {_wrapper_setting(cfg, first)}, {_wrapper_setting(cfg, second)})")
    if entry.check is not None:
        entry.check(cfg)
    if cfg.byzantine_fraction > 0 and cfg.byzantine_attack in RL_ONLY_ATTACKS:
        if client_role(cfg) != keys.ROLE_DQN:
            raise ConfigError(f"config key 'byzantine-attack' = {cfg.byzantine_attack!r} is a faulty DQN agent; "
                              f"strategy {cfg.strategy!r} runs no DQN clients")
        if cfg.byzantine_attack.startswith("poison-") and cfg.strategy != "fusion":
            raise ConfigError(f"config key 'byzantine-attack' = {cfg.byzantine_attack!r} poisons shared experience, "
                              f"which only strategy 'fusion' uses (got {cfg.strategy!r})")
    try:  # a trace file is read now, so that a bad one stops the run at start
        systems_model(cfg.systems_profile, cfg.seed)
    except ProfileError as err:
        raise ConfigError(str(err)) from None
    return entry


def parse_config(run_config: Mapping[str, Any]) -> RunConfig:
    """`RunConfig.from_run_config` plus the registry's checks: what the ServerApp runs on."""
    cfg = RunConfig.from_run_config(run_config)
    check_config(cfg)
    return cfg


def _broadcasts_pace(cfg: RunConfig, entry: StrategyEntry) -> bool:
    """Whether the server tells the clients the last round's pace: only sync controllers read it (the time
    objective, the pace rule and the pace action), and only synchronous rounds have one."""
    wants_pace = (cfg.time_cost == "added-delay" or cfg.sync_policy == "pace-rule"
                  or cfg.controller_actions == "with-pace")
    return entry.role == keys.ROLE_SYNC_CONTROLLER and wants_pace and not cfg.async_aggregation


def build_strategy(cfg: RunConfig) -> Strategy:
    """The strategy named by `strategy`, with the clients' lr schedule, inside the wrappers the config turns on."""
    entry = check_config(cfg)
    enabled = [w for w in WRAPPERS if w.enabled(cfg)]
    settings: dict[str, Any] = {"fraction_train": cfg.fraction_train, "fraction_evaluate": cfg.fraction_evaluate}
    for wrapper in enabled:
        settings.update(wrapper.cls.required_settings)
    strategy: Any = entry.build(cfg, settings)
    if entry.lr_schedule:
        strategy.configure_schedule(cfg.lr, cfg.lr_decay_factor, cfg.lr_decay_every)
    innermost(strategy).configure_update_bounds(max_update_norm=cfg.max_update_norm)
    innermost(strategy).configure_sampling(cfg.seed)  # fraction-train < 1 samples the same partitions per seed
    # the virtual clock times every strategy's rounds; for the RL tasks a "sample" is an environment step
    innermost(strategy).configure_clock(systems_model(cfg.systems_profile, cfg.seed), cfg.round_deadline_s,
                                        cfg.local_epochs if cfg.task == "mnist" else 1,
                                        broadcast_pace=_broadcasts_pace(cfg, entry))
    for wrapper in enabled:
        strategy = wrapper.wrap(strategy, cfg)
    return strategy


def cap_example_claims(strategy: Strategy, cfg: RunConfig, source: mnist.DataSource | None, num_nodes: int) -> None:
    """Cap each reply's claimed num-examples (its weight): by its partition's size where the server can compute
    it (MNIST: the partitioning is the config's), else by the median rule of `ReplyGuardMixin.example_cap`."""
    sizes = None
    if cfg.task == "mnist" and source is not None:
        sizes = mnist.partition_train_sizes(source, num_nodes, cfg.dirichlet_alpha, cfg.seed, cfg.local_test_fraction,
                                            cfg.max_client_examples)
    innermost(strategy).configure_example_caps(sizes)


def measure_replies_with(strategy: Strategy, reply_nbytes: Callable) -> None:
    """The virtual clock reads each reply's size from the grid that metered it (one serialization per reply)."""
    innermost(strategy).configure_reply_sizes(reply_nbytes)


def client_role(cfg: RunConfig) -> str:
    """The role every client of this run plays (sent in each train and evaluate config)."""
    return STRATEGIES[cfg.strategy].role or DEFAULT_ROLE[cfg.task]


def task_model(cfg: RunConfig) -> torch.nn.Module:
    """The network the federation trains: the MNIST CNN, the agent's Q-network, or the policy."""
    if STRATEGIES[cfg.strategy].trains_policy:
        return PolicyNetwork(*env_dims(cfg.task), cfg.pg_hidden)
    if cfg.is_rl:
        agent = cfg.dqn_config()
        return QNetwork(*env_dims(cfg.task), agent.hidden, agent.dueling)
    return mnist.Net(cfg.mnist_width)


def strategy_table() -> str:
    """Markdown table of the registered strategies (for docs/configuration.md and the README)."""
    lines = ["| strategy | tasks | composes with | what it does |", "|---|---|---|---|"]
    for e in STRATEGY_ENTRIES:
        wrappers = ", ".join(f"`{k}`" for w in WRAPPERS if w.name in e.wrappers for k in w.keys) or "—"
        lines.append(f"| `{e.name}` | {', '.join(e.tasks)} | {wrappers} | {e.summary} |")
    return "\n".join(lines) + "\n"
