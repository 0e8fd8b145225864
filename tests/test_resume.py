"""Complete server checkpoints: every strategy's state survives a checkpoint exactly, and the next round equals an
uninterrupted run's where the code is deterministic."""

import io

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord

from fedrl_app.protocol.experience import pack_experience
from fedrl_app.protocol.metadata import ClientMetadata, encode_metadata
from fedrl_app.server.registry import STRATEGIES, build_strategy, parse_config
from tests.helpers import FakeGrid, arrays, reply

NODES = [1, 2, 3]
SMALL_RL = {"dqn-hidden": 8, "dqn-batch-size": 4, "server-updates-per-round": 3, "pg-hidden": 4}


def through_a_checkpoint(state: dict) -> dict:
    """The strategy state as a resumed run reads it back: torch tensors in `last.pt`, weights-only loading."""
    buf = io.BytesIO()
    torch.save({name: {k: torch.from_numpy(np.array(v)) for k, v in group.items()} for name, group in state.items()},
               buf)
    loaded = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    return {name: {k: t.numpy() for k, t in group.items()} for name, group in loaded.items()}


def assert_same_state(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name in a:
        assert set(a[name]) == set(b[name]), name
        for key in a[name]:
            np.testing.assert_array_equal(np.asarray(a[name][key]), np.asarray(b[name][key]), err_msg=f"{name}/{key}")


def config_for(name: str) -> dict:
    task = STRATEGIES[name].tasks[0]
    return {"strategy": name, "task": task, "seed": 5, **(SMALL_RL if task != "mnist" else {})}


def model_for(strategy, name: str) -> dict[str, np.ndarray]:
    if name == "fusion":
        return {k: v.detach().numpy().copy() for k, v in strategy.learner.q.state_dict().items()}
    return {"w": np.array([[0.5, -1.0]], np.float32), "b": np.array([0.25], np.float32)}


def replies_for(name: str, msgs, server_round: int):
    """Deterministic replies to the messages each strategy sends."""
    out = []
    for msg in sorted(msgs, key=lambda m: m.metadata.dst_node_id):  # Flower samples in a random order
        node = msg.metadata.dst_node_id
        sent = {k: v.numpy() for k, v in msg.content["arrays"].items()}
        new = {k: (0.9 * v + 0.01 * node * server_round).astype(np.float32) for k, v in sent.items()}
        if name in ("fedpg", "lapg"):
            meta = encode_metadata(ClientMetadata(partition_id=node - 1, num_examples=20, train_time_s=0.1,
                                                  env_steps=20, gradient_uploaded=not (name == "lapg" and node == 3
                                                                                       and server_round > 1)))
            r = reply(node, arrays(**new), 20, metadata=meta, to=msg,
                      metrics={"num-examples": 20, "episodes": 2, "return": 10.0})
            del r.content["arrays"]
            if not (name == "lapg" and node == 3 and server_round > 1):  # node 3 goes lazy after round 1
                r.content["gradient"] = arrays(**{k: v - sent[k] for k, v in new.items()})
            out.append(r)
            continue
        if name == "drl-compress":
            meta = encode_metadata(ClientMetadata(partition_id=node - 1, num_examples=10 * node, train_time_s=0.1,
                                                  sync_decision="full"))
            r = reply(node, arrays(**new), 10 * node, metadata=meta, to=msg)
            del r.content["arrays"]
            r.content["delta"] = arrays(**{k: v - sent[k] for k, v in new.items()})
            out.append(r)
            continue
        extra = {}
        if name == "scaffold":
            extra["control-delta"] = arrays(**{k: np.full_like(v, 0.1 * node) for k, v in sent.items()})
        if name == "fusion":
            rng = np.random.default_rng(node * 100 + server_round)
            obs = rng.normal(size=(6, 4)).astype(np.float32)
            extra["experience"] = pack_experience(obs, rng.integers(0, 2, 6), rng.normal(size=6), obs,
                                                  np.zeros(6))[0]
        out.append(reply(node, arrays(**new), 10 * node, extra=extra, to=msg))
    return out


def run_round(strategy, name: str, flower_round: int, model: dict) -> dict:
    """One round as Flower drives it (its loop counter restarts at 1 after a resume; the strategy adds the offset)."""
    msgs = list(strategy.configure_train(flower_round, arrays(**model), ConfigRecord({}), FakeGrid(NODES)))
    true_round = flower_round + strategy.round_offset
    new, _ = strategy.aggregate_train(flower_round, replies_for(name, msgs, true_round))
    return {k: v.numpy() for k, v in new.items()} if new is not None else model


SYNC = [n for n in STRATEGIES if n != "afedpg"]


@pytest.mark.parametrize("name", SYNC)
def test_a_restored_strategy_holds_the_saved_state_and_continues_like_an_uninterrupted_one(name):
    cfg = parse_config({**config_for(name), "fraction-train": 1.0})
    torch.manual_seed(0)
    uninterrupted = build_strategy(cfg)
    model = model_for(uninterrupted, name)
    for r in (1, 2):
        model = run_round(uninterrupted, name, r, model)
    saved = through_a_checkpoint(uninterrupted.state_dict())

    torch.manual_seed(1)  # a fresh process: nothing but the checkpoint carries over
    resumed = build_strategy(cfg)
    resumed.load_state_dict(saved)
    resumed.round_offset = 2
    assert_same_state(through_a_checkpoint(resumed.state_dict()), saved)

    torch.manual_seed(2)
    expected = run_round(uninterrupted, name, 3, model)
    torch.manual_seed(2)
    got = run_round(resumed, name, 1, model)  # Flower's loop restarts at 1; the offset makes it round 3
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=f"{name}: {k} after the resume")


def test_stateful_strategies_do_checkpoint_something():
    for name in ("scaffold", "fedadagrad", "fusion", "fedpg", "lapg"):
        cfg = parse_config({**config_for(name), "fraction-train": 1.0})
        s = build_strategy(cfg)
        model = model_for(s, name)
        for r in (1, 2):
            model = run_round(s, name, r, model)
        assert s.state_dict(), name
    lapg = build_strategy(parse_config({**config_for("lapg"), "fraction-train": 1.0}))
    model = model_for(lapg, "lapg")
    for r in (1, 2):
        model = run_round(lapg, "lapg", r, model)
    assert {k for k in lapg.state_dict() if k.startswith("lapg/last/")} == {"lapg/last/0", "lapg/last/1",
                                                                            "lapg/last/2"}


def test_afedpg_momentum_and_clock_survive_a_checkpoint():
    from strategies import AFedPG, FedPG
    from tests.helpers import InstantGrid
    from tests.test_pg_strategies import pg_reply

    def grid():
        return InstantGrid([1, 2], lambda msg: pg_reply(msg.metadata.dst_node_id,
                                                        [1.0, float(msg.metadata.dst_node_id)], to=msg))

    s = AFedPG(FedPG(), step_size=0.5, eta_exponent=0.5, jitter=0.0, speeds={1: 1.0, 2: 1.5})
    s.start(grid(), arrays(w=[0.0, 0.0]), num_rounds=3, train_config=ConfigRecord({"role": "policy-gradient"}))
    saved = through_a_checkpoint(s.state_dict())
    assert {"afedpg", "afedpg/direction", "afedpg/previous", "fedpg"} <= set(saved)
    restored = AFedPG(FedPG(), step_size=0.5, eta_exponent=0.5, jitter=0.0, speeds={1: 1.0, 2: 1.5})
    restored.load_state_dict(saved)
    assert_same_state(through_a_checkpoint(restored.state_dict()), saved)
    assert restored.sim_time == s.sim_time and restored.staleness == s.staleness
