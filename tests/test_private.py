"""DP wrappers: clipping and equal weights exact, noise scale, ε accounting and its resume, hostile replies."""

import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fedrl_app.client_app import dp_clipping_mod
from fedrl_app.config import ConfigError, RunConfig
from fedrl_app.server.registry import build_strategy, parse_config
from strategies import ClientSideDP, FedAvg, ServerSideDP
from tests.helpers import FakeGrid, arrays, reply

GRID = FakeGrid([1, 2])


def _round(strategy, server_round, sent, replies):
    list(strategy.configure_train(server_round, sent, ConfigRecord({}), GRID))
    return strategy.aggregate_train(server_round, replies)


def gaussian_epsilon(rounds: int, z: float, delta: float) -> float:
    """ε of `rounds` Gaussian releases: RDP α·T/(2z²), converted as in Canonne, Kamath & Steinke (2020), min over α."""
    alphas = np.linspace(1.01, 200, 200_000)
    eps = rounds * alphas / (2 * z * z) + np.log1p(-1 / alphas) - (np.log(delta) + np.log(alphas)) / (alphas - 1)
    return float(eps.min())


def test_server_side_clips_each_update_and_weighs_clients_equally():
    s = ServerSideDP(FedAvg(), noise_multiplier=0.0, clipping_norm=1.0)
    sent = arrays(w=[1.0, 1.0])
    # node 1 moved by (3, 4) (norm 5 -> clipped to (0.6, 0.8)) and claims 100 examples; node 2 moved by (0.1, 0)
    new, _ = _round(s, 1, sent, [reply(1, arrays(w=[4.0, 5.0]), 100), reply(2, arrays(w=[1.1, 1.0]), 1)])
    np.testing.assert_allclose(new["w"].numpy(), [1.0 + (0.6 + 0.1) / 2, 1.0 + 0.8 / 2], rtol=1e-6)
    extra = s.rounds[1].extra
    assert extra["dp-noise-stdev"] == 0.0 and extra["dp-clipped-replies"] == 2 and "dp-epsilon" not in extra
    assert extra["dp-update-norm-median"] == pytest.approx((5.0 + 0.1) / 2, rel=1e-6) and extra["dp-clipped-fraction"] == 0.5
    assert [r.metrics["num-examples"] for r in s.rounds[1].reports] == [100, 1]  # what clients declared, as logged


def test_noise_has_standard_deviation_z_c_over_n():
    np.random.seed(0)  # Flower draws the noise from numpy's global generator
    s = ServerSideDP(FedAvg(), noise_multiplier=2.0, clipping_norm=0.5)
    zeros = np.zeros(40_000)
    new, _ = _round(s, 1, arrays(w=zeros), [reply(1, arrays(w=zeros), 5), reply(2, arrays(w=zeros), 5)])
    noise = new["w"].numpy()
    assert s.rounds[1].extra["dp-noise-stdev"] == pytest.approx(2.0 * 0.5 / 2)
    assert np.std(noise) == pytest.approx(0.5, rel=0.02) and abs(np.mean(noise)) < 0.01


def test_epsilon_is_that_of_composed_gaussian_releases():
    s = ServerSideDP(FedAvg(), noise_multiplier=1.5, clipping_norm=1.0, target_delta=1e-5)
    w = arrays(w=[0.0])
    for r in (1, 2, 3):
        _round(s, r, w, [reply(1, arrays(w=[0.1]), 5), reply(2, arrays(w=[0.2]), 5)])
    eps = [s.rounds[r].extra["dp-epsilon"] for r in (1, 2, 3)]
    assert eps == sorted(eps) and s.rounds[3].extra["dp-releases"] == 3 and s.rounds[3].extra["dp-delta"] == 1e-5
    for r, e in zip((1, 2, 3), eps):  # the accountant's order grid is discrete: at or a little above the continuous min
        assert gaussian_epsilon(r, 1.5, 1e-5) - 1e-6 <= e <= gaussian_epsilon(r, 1.5, 1e-5) * 1.02


def test_bad_replies_are_dropped_before_clipping_and_the_noise_is_accounted_for_fewer_clients():
    s = ServerSideDP(FedAvg(), noise_multiplier=1.0, clipping_norm=1.0)
    sent = arrays(w=[0.0, 0.0])
    bad_shape = reply(1, arrays(w=[1.0, 2.0, 3.0]), 5)
    nan = reply(2, arrays(w=[float("nan"), 0.0]), 5)
    list(s.configure_train(1, sent, ConfigRecord({}), FakeGrid([1, 2, 3, 4])))
    new, _ = s.aggregate_train(1, [bad_shape, nan, reply(3, arrays(w=[0.5, 0.0]), 5), reply(4, arrays(w=[0.5, 0.0]), 5)])
    assert new is not None and np.all(np.isfinite(new["w"].numpy()))
    assert sorted(node for node, _ in s.rounds[1].dropped) == [1, 2] and len(s.rounds[1].reports) == 2
    assert s.released == [0.5]  # noise calibrated for n=4, sensitivity of a mean of 2: z·2/4
    assert s.aggregate_train(2, [bad_shape]) == (None, None)


def test_client_side_sends_the_norm_and_refuses_an_unclipped_update():
    s = ClientSideDP(FedAvg(), noise_multiplier=0.0, clipping_norm=1.0)
    messages = list(s.configure_train(1, arrays(w=[0.0, 0.0]), ConfigRecord({}), GRID))
    assert all(m.content["config"][KEY_CLIPPING_NORM] == 1.0 for m in messages)
    new, _ = s.aggregate_train(1, [reply(1, arrays(w=[0.6, 0.8]), 5), reply(2, arrays(w=[30.0, 40.0]), 5)])
    np.testing.assert_allclose(new["w"].numpy(), [0.6, 0.8], rtol=1e-6)
    assert [node for node, _ in s.rounds[1].dropped] == [2] and "exceeds the DP clipping norm" in s.rounds[1].dropped[0][1]
    assert [r.node_id for r in s.rounds[1].reports] == [1]


def test_resume_replays_the_releases_so_epsilon_keeps_counting():
    def run(strategy, rounds):
        for r in rounds:
            _round(strategy, r, arrays(w=[0.0]), [reply(1, arrays(w=[0.1]), 5), reply(2, arrays(w=[0.2]), 5)])

    straight = ServerSideDP(FedAvg(), noise_multiplier=1.0, clipping_norm=1.0)
    run(straight, (1, 2, 3))
    first = ServerSideDP(FedAvg(), noise_multiplier=1.0, clipping_norm=1.0)
    run(first, (1, 2))
    resumed = ServerSideDP(FedAvg(), noise_multiplier=1.0, clipping_norm=1.0)
    resumed.load_state_dict(first.state_dict())
    resumed.round_offset = 2
    run(resumed, (1,))  # Flower's loop restarts at 1; the true round is 3
    assert resumed.rounds[3].extra["dp-epsilon"] == pytest.approx(straight.rounds[3].extra["dp-epsilon"])
    assert resumed.rounds[3].extra["dp-releases"] == 3


def test_client_mod_clips_only_when_asked():
    sent = arrays(w=[0.0, 0.0])

    def message(config):
        return Message(RecordDict({"arrays": sent, "config": ConfigRecord(config)}), dst_node_id=1,
                       message_type="train")

    def far_away(msg, context):
        return reply(1, arrays(w=[3.0, 4.0]), 5, to=msg)

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    clipped = dp_clipping_mod(message({"server-round": 1, KEY_CLIPPING_NORM: 1.0}), context, far_away)
    np.testing.assert_allclose(clipped.content["arrays"]["w"].numpy(), [0.6, 0.8], rtol=1e-6)
    untouched = dp_clipping_mod(message({"server-round": 1}), context, far_away)
    np.testing.assert_array_equal(untouched.content["arrays"]["w"].numpy(), [3.0, 4.0])


@pytest.mark.parametrize("overrides, match", [
    ({"dp-mode": "server", "strategy": "scaffold"}, r"'dp-mode' works with strategy in \['fedavg', 'fedprox'\], not "
                                                    r"'scaffold' \(got dp-mode='server'\)"),
    ({"dp-mode": "client", "async-aggregation": True}, r"'async-aggregation' and 'dp-mode' cannot be combined"),
    ({"dp-mode": "both"}, r"'dp-mode'"),
    ({"dp-noise-multiplier": -1.0}, r"'dp-noise-multiplier' must be >= 0"),
    ({"dp-target-delta": 1.0}, r"'dp-target-delta' must be in \(0.0, 1.0\)"),
    ({"dp-clipping-norm": 0.0}, r"'dp-clipping-norm' must be > 0"),
])
def test_bad_dp_config_names_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(overrides)


def test_build_strategy_wraps_fedprox_with_the_configured_mode():
    s = build_strategy(RunConfig.from_run_config({"strategy": "fedprox", "dp-mode": "client",
                                                  "dp-noise-multiplier": 0.7, "dp-clipping-norm": 2.0}))
    assert isinstance(s, ClientSideDP) and s.noise_multiplier == 0.7 and s.clipping_norm == 2.0
    assert type(s.strategy).__name__ == "FedProx" and math.isclose(s.target_delta, 1e-5)
