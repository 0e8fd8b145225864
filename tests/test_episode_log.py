"""A client's episode continues across rounds in any process: `EpisodeLog` replay (fedrl_app.tasks.gym_rl)."""

from __future__ import annotations

import numpy as np
import pytest

from fedrl_app.agents.dqn import DQNAgent, DQNConfig
from fedrl_app.client.dqn import episode_log_from_record, episode_log_to_record
from fedrl_app.tasks import gym_rl
from fedrl_app.tasks.gym_rl import EpisodeLog, run_steps

WINDY = {"gravity": -10.0, "wind-power": 15.0, "turbulence-power": 1.5}
CASES = [("cartpole", 4, 2, None), ("lunarlander", 8, 4, WINDY)]


def _agent(obs_dim: int, n_actions: int) -> DQNAgent:
    return DQNAgent(obs_dim, n_actions, DQNConfig(hidden=16, learning_starts=40, batch_size=16), seed=3)


def _rounds(task, obs_dim, n_actions, env_params, *, key, between=lambda: None, steps=(70, 90, 110)):
    """Three rounds of one client: its episode returns and lengths, its stored observations, its final log."""
    agent, log, returns, lengths = _agent(obs_dim, n_actions), None, [], []
    for n in steps:
        stats = run_steps(agent, task, key=key, seed=11, steps=n, env_params=env_params, episode_log=log)
        returns += stats.episode_returns
        lengths += stats.episode_lengths
        log = stats.episode_log
        between()
    return returns, lengths, agent.buffer.obs[: agent.buffer.size].copy(), log


@pytest.mark.parametrize(("task", "obs_dim", "n_actions", "env_params"), CASES)
def test_a_process_without_the_episode_replays_it_and_continues_exactly(task, obs_dim, n_actions, env_params):
    same_process = _rounds(task, obs_dim, n_actions, env_params, key=("log-same", task))
    # every round in a "new process": the cache is empty, only the log travels
    new_process = _rounds(task, obs_dim, n_actions, env_params, key=("log-new", task),
                          between=lambda: gym_rl._EPISODES.pop(("log-new", task)))
    assert same_process[0] == new_process[0] and same_process[1] == new_process[1]
    np.testing.assert_array_equal(same_process[2], new_process[2])
    assert same_process[3] == new_process[3]
    assert len(same_process[1]) >= 2  # episodes ended and restarted along the way: the log's generator state was used
    assert same_process[3].rng_state != ""


def test_a_stale_cached_episode_is_not_continued():
    agent = _agent(4, 2)
    first = run_steps(agent, "cartpole", key=("log-stale",), seed=11, steps=30, episode_log=None)
    stale = gym_rl._EPISODES[("log-stale",)]
    # another process ran the client's next round: this process's copy is 30 steps behind
    other = run_steps(agent, "cartpole", key=("log-elsewhere",), seed=11, steps=30, episode_log=first.episode_log)
    again = gym_rl.current_episode("cartpole", ("log-stale",), 11, agent.env_steps, other.episode_log)
    assert again is not stale and again.log == other.episode_log
    np.testing.assert_array_equal(again.obs, gym_rl._EPISODES[("log-elsewhere",)].obs)


def test_a_log_from_another_environment_is_refused():
    log = EpisodeLog("", [0] * 40)  # always left: CartPole's pole falls within ~10 steps
    with pytest.raises(ValueError, match="does not belong"):
        gym_rl.replay_episode("cartpole", 11, log)


def test_episode_log_round_trips_through_a_config_record():
    for log in (EpisodeLog(), EpisodeLog('{"state": 1}', [0, 3, 2, 1])):
        assert episode_log_from_record(episode_log_to_record(log)) == log
