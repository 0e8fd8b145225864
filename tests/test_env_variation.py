"""Per-client environments (`env-variation`) and faulty RL agents (`byzantine-attack` for DQN clients)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrl_app.agents.dqn import DQNAgent, DQNConfig
from fedrl_app.client.drills import byzantine_update, poison_experience
from fedrl_app.config import ConfigError, RunConfig
from fedrl_app.server.registry import parse_config
from fedrl_app.tasks.env_variation import EnvVariationError, env_params, make_env, num_variants, parse_variation
from fedrl_app.tasks.gym_rl import run_steps


def test_explicit_lists_cycle_over_partitions_and_the_rest_stays_nominal():
    spec = "gravity=-10,-6,-3; wind-power=0,12"
    assert num_variants("lunarlander", spec) == 6
    assert env_params("lunarlander", spec, 0) == {"gravity": -10.0, "wind-power": 0.0, "turbulence-power": 0.0}
    assert env_params("lunarlander", spec, 4) == {"gravity": -6.0, "wind-power": 0.0, "turbulence-power": 0.0}
    assert env_params("lunarlander", spec, 5) == {"gravity": -3.0, "wind-power": 12.0, "turbulence-power": 0.0}
    assert env_params("lunarlander", "none", 3) == {"gravity": -10.0, "wind-power": 0.0, "turbulence-power": 0.0}
    assert num_variants("cartpole", "varied") == 5 and env_params("cartpole", "varied", 8)["length"] == 1.0


@pytest.mark.parametrize(("spec", "message"), [
    ("gravity=-12", r"gravity = -12 is outside \(-12, 0\)"),
    ("gravity=0", r"gravity = 0 is outside"),
    ("wind-power=21", r"wind-power = 21 is outside \[0, 20\]"),
    ("turbulence-power=-0.1", "turbulence-power"),
    ("gravity=nan", "gravity = nan is outside"),
    ("gravty=-5", "has no parameter 'gravty'"),
    ("gravity=-5,x", "not a comma-separated list"),
    ("gravity=-5; gravity=-6", "given twice"),
    ("moon", "neither a profile"),
])
def test_bad_specs_name_the_parameter_and_value(spec, message):
    with pytest.raises(EnvVariationError, match=message):
        parse_variation("lunarlander", spec)


def test_lunarlander_variant_sets_gravity_and_wind():
    env = make_env("lunarlander", env_params("lunarlander", "varied", 3))
    env.reset(seed=0)
    lander = env.unwrapped
    assert lander.world.gravity == (0.0, -4.5) and lander.enable_wind and lander.wind_power == 15.0
    assert lander.turbulence_power == 1.5
    nominal = make_env("lunarlander")
    nominal.reset(seed=0)
    assert nominal.unwrapped.world.gravity == (0.0, -10.0) and not nominal.unwrapped.enable_wind


def test_cartpole_variant_changes_the_dynamics():
    def trajectory(params):
        env = make_env("cartpole", params)
        obs, _ = env.reset(seed=3)
        for _ in range(10):
            obs, *_ = env.step(1)
        return obs
    heavy = {"gravity": 9.8, "masspole": 0.3, "length": 1.0}
    np.testing.assert_array_equal(trajectory(None), trajectory({"gravity": 9.8, "masspole": 0.1, "length": 0.5}))
    assert not np.allclose(trajectory(None), trajectory(heavy))
    pole = make_env("cartpole", heavy).unwrapped
    assert pole.total_mass == pytest.approx(1.3) and pole.polemass_length == pytest.approx(0.3)


def test_config_refuses_variation_off_rl_and_rl_attacks_where_they_mean_nothing():
    with pytest.raises(ConfigError, match="'env-variation' applies to the RL tasks"):
        RunConfig.from_run_config({"task": "mnist", "env-variation": "varied"})
    with pytest.raises(ConfigError, match="wind-power = 30 is outside"):
        RunConfig.from_run_config({"task": "lunarlander", "env-variation": "wind-power=30"})
    with pytest.raises(ConfigError, match="is a faulty RL agent; task is 'mnist'"):
        RunConfig.from_run_config({"byzantine-fraction": 0.2, "byzantine-attack": "reward-flip"})
    rl = {"task": "cartpole", "byzantine-fraction": 0.2}
    with pytest.raises(ConfigError, match="only strategy 'fusion' uses"):
        parse_config({**rl, "strategy": "fedavg", "byzantine-attack": "poison-rewards"})
    with pytest.raises(ConfigError, match="runs no DQN clients"):
        parse_config({**rl, "strategy": "fedpg", "byzantine-attack": "random-action"})
    assert parse_config({**rl, "strategy": "fusion", "byzantine-attack": "poison-states"}).strategy == "fusion"


def test_poisoned_experience():
    rng = np.random.default_rng(0)
    batch = (np.ones((4, 8), np.float32), np.arange(4), np.array([1.0, -2.0, 0.5, 100.0], np.float32),
             np.ones((4, 8), np.float32), np.zeros(4, np.float32))
    flipped = poison_experience(batch, "poison-rewards", rng)
    np.testing.assert_array_equal(flipped[2], [-1.0, 2.0, -0.5, -100.0])
    assert flipped[0] is batch[0]
    states = poison_experience(batch, "poison-states", rng)
    assert states[0].shape == (4, 8) and np.abs(states[0]).max() <= 10 and np.abs(states[0]).mean() > 2
    np.testing.assert_array_equal(states[2], batch[2])


def test_update_attacks_exact():
    net = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[3.0, 5.0]]))
    start = [torch.tensor([[1.0, 1.0]])]  # Δ = (2, 4)
    byzantine_update(start, net, "scale", -2.5)  # FedPG-BR's sign flip
    torch.testing.assert_close(net.weight.detach(), torch.tensor([[-4.0, -9.0]]))
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[3.0, 5.0]]))
    byzantine_update(start, net, "noise", 10.0, rng=torch.Generator().manual_seed(0))
    delta = net.weight.detach() - start[0]
    expected = 10.0 * float(np.sqrt((4 + 16) / 2)) * torch.randn((1, 2), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(delta, expected)


def test_faulty_agents_act_at_random_or_learn_from_negated_rewards():
    config = DQNConfig(hidden=8, learning_starts=10_000, epsilon_start=0.0, epsilon_end=0.0)
    honest = DQNAgent(4, 2, config, seed=1)
    flipped = DQNAgent(4, 2, config, seed=1)
    stats_h = run_steps(honest, "cartpole", key=("test-honest",), seed=5, steps=50)
    stats_f = run_steps(flipped, "cartpole", key=("test-flipped",), seed=5, steps=50, fault="reward-flip")
    # the same greedy agent and episode: CartPole pays +1 a step, the faulty one stores −1 and reports the truth
    assert stats_h.episode_returns == stats_f.episode_returns
    np.testing.assert_array_equal(honest.buffer.rewards[:50], 1.0)
    np.testing.assert_array_equal(flipped.buffer.rewards[:50], -1.0)
    greedy = DQNAgent(4, 2, config, seed=2)
    random_agent = DQNAgent(4, 2, config, seed=2)
    run_steps(greedy, "cartpole", key=("test-greedy",), seed=6, steps=200)
    run_steps(random_agent, "cartpole", key=("test-random",), seed=6, steps=200, fault="random-action")
    greedy_actions = greedy.buffer.actions[:200]
    assert len(set(greedy_actions.tolist())) <= 2 and greedy.act_flops > 0
    assert random_agent.act_flops == 0  # it never consulted its network
    assert 0.3 < float(random_agent.buffer.actions[:200].mean()) < 0.7
