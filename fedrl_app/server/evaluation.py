"""Central evaluation of the global model: test accuracy and loss (MNIST), or the greedy policy's return (RL)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord

from fedrl_app.config import RunConfig
from fedrl_app.protocol import keys
from fedrl_app.server.registry import client_role, task_model
from fedrl_app.tasks import mnist
from fedrl_app.tasks.env_variation import num_variants
from fedrl_app.tasks.gym_rl import evaluate_policy


VARIANT_EVAL_EVERY = 10  # rounds between evaluations on every env-variation variant (and the last round)


def evaluation_seed(seed: int, server_round: int) -> int:
    """The seed of a round's first evaluation episode (episode i starts from this + i).

    Every round plays other start states: a few fixed ones, replayed every round, were an estimate of
    the policy on those states only (5 fixed episodes read 267.7 where 100 others read 178.7 ± 86.3, a
    LunarLander Fusion network of round 61). The network the clients start from is judged on the same
    episodes as the deployed one (the recorder's `sent-` metrics), and a run and its resume agree.
    """
    return int(np.random.SeedSequence([seed, server_round, 10_000]).generate_state(1)[0])


def central_evaluator(cfg: RunConfig, source: mnist.DataSource | None
                      ) -> Callable[[ArrayRecord, int], dict[str, float]]:
    """(arrays, server round) -> metrics on the server's data; RL: the greedy policy, argmax of the network's
    outputs."""
    net = task_model(cfg)
    if cfg.is_rl:
        variants = num_variants(cfg.task, cfg.env_variation) if cfg.env_variation.strip() not in ("", "none") else 0

        def evaluate_rl(arrays: ArrayRecord, server_round: int) -> dict[str, float]:
            """The nominal environment's return, and with `env-variation`, every VARIANT_EVAL_EVERY rounds and
            at the last, each variant's (`return-env-<i>`: the dynamics of partitions i, i + L, i + 2L, ...)
            and their mean (`return-envs`)."""
            net.load_state_dict(arrays.to_torch_state_dict())
            returns = evaluate_policy(net, cfg.task, cfg.eval_episodes, seed=evaluation_seed(cfg.seed, server_round))
            metrics = {"return": float(np.mean(returns)), "return-std": float(np.std(returns))}
            if server_round % VARIANT_EVAL_EVERY and server_round != cfg.num_server_rounds:
                return metrics
            for i in range(variants):
                metrics[f"return-env-{i}"] = float(np.mean(evaluate_policy(
                    net, cfg.task, cfg.eval_episodes, seed=evaluation_seed(cfg.seed, server_round),
                    env_params=cfg.env_params(i))))
            if variants:
                metrics["return-envs"] = float(np.mean([metrics[f"return-env-{i}"] for i in range(variants)]))
            return metrics
        return evaluate_rl

    test_set = mnist.load_test_set(source)

    def evaluate_mnist(arrays: ArrayRecord, server_round: int) -> dict[str, float]:
        net.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = mnist.evaluate(net, test_set, cfg.eval_batch_size)
        return {"accuracy": accuracy, "loss": loss}
    return evaluate_mnist


def client_train_config(cfg: RunConfig) -> ConfigRecord:
    """What every train message carries besides the per-round values the strategy injects."""
    return ConfigRecord({keys.ROLE: client_role(cfg), keys.LOCAL_EPOCHS: cfg.local_epochs,
                         keys.BATCH_SIZE: cfg.batch_size, keys.MOMENTUM: cfg.momentum})


def client_evaluate_config(cfg: RunConfig) -> ConfigRecord:
    """What every evaluate message carries: the role, so the client loads the right network."""
    return ConfigRecord({keys.ROLE: client_role(cfg)})
