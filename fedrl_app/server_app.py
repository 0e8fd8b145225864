"""ServerApp: validate the run config, build the strategy, run it with the shared hooks."""

from __future__ import annotations

from dataclasses import replace
from logging import ERROR, INFO

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from fedrl_app.agents.dqn import QNetwork
from fedrl_app.agents.policy_gradient import PolicyNetwork
from fedrl_app.config import PG_STRATEGIES, RL_TASKS, ConfigError, RunConfig
from fedrl_app.hooks import RunHooks, load_checkpoint, new_run_dir, resolve_resume_dir
from fedrl_app.metered_grid import MeteredGrid
from fedrl_app.paths import outputs_root
from fedrl_app.rl_client import dqn_config
from fedrl_app.tasks import mnist
from fedrl_app.tasks.gym_rl import env_dims, evaluate_policy
from strategies import (AFedPG, LAPG, AsyncBuffer, ClientSideDP, Clustered, DrlCompress, FedAdagrad, FedAvg, FedMedian,
                        FedPG, FedProx, FedTrimmedAvg, Fusion, Krum, Scaffold, ServerSideDP)

app = ServerApp()


def build_strategy(cfg: RunConfig):
    """The strategy named by config key `strategy`, with the LR schedule attached."""
    common = dict(fraction_train=cfg.fraction_train, fraction_evaluate=cfg.fraction_evaluate)
    if cfg.strategy in PG_STRATEGIES:
        return build_pg_strategy(cfg, common)
    if cfg.strategy == "fedavg":
        strategy = FedAvg(**common)
    elif cfg.strategy == "fedprox":
        strategy = FedProx(**common, proximal_mu=cfg.proximal_mu)
    elif cfg.strategy == "scaffold":
        strategy = Scaffold(**common)
    elif cfg.strategy == "drl-compress":
        strategy = DrlCompress(**common, bytes_penalty=cfg.bytes_penalty, prune_threshold=cfg.prune_threshold,
                               num_rounds=cfg.num_server_rounds, sync_policy=cfg.sync_policy,
                               controller_reward=cfg.controller_reward)
    elif cfg.strategy == "fusion":
        obs_dim, n_actions = env_dims(cfg.task)
        # the server learner is the clients' agent, except for the size of its (global) replay buffer
        server_agent = replace(dqn_config(cfg), buffer_size=cfg.server_buffer_size)
        strategy = Fusion(**common, obs_dim=obs_dim, n_actions=n_actions, agent_config=server_agent,
                          mix=cfg.fusion_mix, diversity_filter=cfg.diversity_filter,
                          diversity_threshold=cfg.diversity_threshold, filter_k=cfg.filter_k,
                          server_updates=cfg.server_updates_per_round, seed=cfg.seed)
    elif cfg.strategy == "fedmedian":
        strategy = FedMedian(**common)
    elif cfg.strategy == "fedtrimmedavg":
        strategy = FedTrimmedAvg(**common, beta=cfg.trimmed_beta)
    elif cfg.strategy == "krum":
        strategy = Krum(**common, num_malicious_nodes=cfg.krum_malicious)
    elif cfg.strategy == "fedadagrad":
        strategy = FedAdagrad(**common, eta=cfg.server_lr, eta_l=cfg.lr, tau=cfg.adagrad_tau)
    else:  # RunConfig.validate already refused it; keep the message if someone bypasses it
        raise ConfigError(f"config key 'strategy' is {cfg.strategy!r}")
    strategy.configure_schedule(cfg.lr, cfg.lr_decay_factor, cfg.lr_decay_every)
    if cfg.clustering:
        return Clustered(strategy, cluster_every=cfg.cluster_every, max_clusters=cfg.max_clusters, seed=cfg.seed)
    if cfg.async_aggregation:
        return AsyncBuffer(strategy, buffer_size=cfg.buffer_size, staleness_exponent=cfg.staleness_exponent,
                           speed_sigma=cfg.speed_sigma, seed=cfg.seed)
    if cfg.dp_mode != "off":
        wrapper = ServerSideDP if cfg.dp_mode == "server" else ClientSideDP
        return wrapper(strategy, cfg.dp_noise_multiplier, cfg.dp_clipping_norm, target_delta=cfg.dp_target_delta)
    return strategy


def build_pg_strategy(cfg: RunConfig, common: dict):
    """fedpg / lapg / afedpg: the server steps with `pg-lr` (or AFedPG's α), not the clients' lr schedule."""
    clock = dict(speed_sigma=cfg.speed_sigma, seed=cfg.seed)
    if cfg.strategy == "lapg":
        return LAPG(**common, **clock, lr=cfg.pg_lr, threshold=cfg.lapg_threshold, memory=cfg.lapg_memory)
    if cfg.strategy == "afedpg":
        return AFedPG(FedPG(**common, **clock, lr=cfg.pg_lr), **clock, step_size=cfg.afedpg_step_size,
                      eta_exponent=cfg.afedpg_eta_exponent, delay_adaptive=cfg.afedpg_delay_adaptive,
                      step_exponent=cfg.afedpg_step_exponent)
    return FedPG(**common, **clock, lr=cfg.pg_lr)


def task_model(cfg: RunConfig) -> torch.nn.Module:
    """The network the federation trains: the MNIST CNN, the agent's Q-network, or (fedpg/lapg/afedpg) the policy."""
    if cfg.task in RL_TASKS and cfg.strategy in PG_STRATEGIES:
        return PolicyNetwork(*env_dims(cfg.task), cfg.pg_hidden)
    if cfg.task in RL_TASKS:
        agent_cfg = dqn_config(cfg)
        return QNetwork(*env_dims(cfg.task), agent_cfg.hidden, agent_cfg.dueling)
    return mnist.Net()


def central_evaluator(cfg: RunConfig, source):
    """Server-side evaluation of the global model: test accuracy/loss, or greedy-policy return.

    RL: the greedy policy, argmax of the network's outputs (Q-values, or the policy's logits).
    """
    net = task_model(cfg)
    if cfg.task in RL_TASKS:
        def evaluate_rl(arrays: ArrayRecord) -> dict[str, float]:
            net.load_state_dict(arrays.to_torch_state_dict())
            returns = evaluate_policy(net, cfg.task, cfg.eval_episodes, seed=10_000 + cfg.seed)
            return {"return": float(np.mean(returns)), "return-std": float(np.std(returns))}
        return evaluate_rl

    test_set = mnist.load_test_set(source)

    def evaluate_mnist(arrays: ArrayRecord) -> dict[str, float]:
        net.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = mnist.evaluate(net, test_set, cfg.eval_batch_size)
        return {"accuracy": accuracy, "loss": loss}
    return evaluate_mnist


def client_train_config(cfg: RunConfig) -> ConfigRecord:
    """What clients need besides the per-round values the strategy injects."""
    return ConfigRecord({
        "local-epochs": cfg.local_epochs, "batch-size": cfg.batch_size, "momentum": cfg.momentum,
    })


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run one experiment end to end; stop at once with a clear message on bad config."""
    try:
        cfg = RunConfig.from_run_config(context.run_config)
        source = mnist.resolve_source(cfg.data_path) if cfg.task == "mnist" else None
        root = outputs_root(cfg.outputs_dir)
        resume = None
        if cfg.resume_from:
            run_dir = resolve_resume_dir(cfg.resume_from, root)
            resume = load_checkpoint(run_dir)
        else:
            run_dir = new_run_dir(root)
    except (ConfigError, FileNotFoundError) as err:
        log(ERROR, "fedrl: invalid configuration: %s", err)
        raise  # marks the run failed (a SystemExit would read as completed)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    strategy = build_strategy(cfg)
    if resume is not None:
        initial = ArrayRecord(resume["arrays"])
        if hasattr(strategy, "load_state_dict"):
            strategy.load_state_dict({
                name: {k: t.numpy() for k, t in group.items()} for name, group in resume["strategy-state"].items()
            })
        strategy.round_offset = int(resume["round"])
        log(INFO, "fedrl: resuming %s from round %d", run_dir, strategy.round_offset)
    else:
        initial = ArrayRecord(task_model(cfg).state_dict())
    remaining = cfg.num_server_rounds - strategy.round_offset
    log(INFO, "fedrl: task=%s strategy=%s rounds=%d; outputs in %s", cfg.task, cfg.strategy, remaining, run_dir)

    central_evaluate = central_evaluator(cfg, source)

    metered = MeteredGrid(grid)
    hooks = RunHooks(cfg, run_dir, strategy, metered, central_evaluate, resume=resume)
    if remaining > 0:
        strategy.start(
            grid=metered, initial_arrays=initial, num_rounds=remaining, timeout=cfg.round_timeout,
            train_config=client_train_config(cfg), evaluate_config=ConfigRecord({}),
            evaluate_fn=hooks.evaluate_fn,
        )
    else:
        log(INFO, "fedrl: %s already ran %d of %d rounds; nothing to do", run_dir, strategy.round_offset,
            cfg.num_server_rounds)
    hooks.finish()
