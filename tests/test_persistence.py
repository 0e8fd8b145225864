"""Client state that survives a SuperNode restart: saved atomically, loaded into an empty state, tagged by experiment."""

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedrl_app.client.persistence import experiment_tag, persistent_state_mod, state_path


def _context(tmp_path, run_config=None, state_dir=True):
    node_config = {"partition-id": 3, "num-partitions": 4, **({"state-dir": str(tmp_path)} if state_dir else {})}
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(),
                   run_config=run_config or {"strategy": "scaffold", "seed": 1})


def _train(msg, context):
    """A client that counts its rounds and keeps an array in its state, as SCAFFOLD's c_i."""
    counter = context.state.config_records.get("counter", ConfigRecord({"rounds": 0}))
    context.state["counter"] = ConfigRecord({"rounds": int(counter["rounds"]) + 1})
    context.state["ci"] = ArrayRecord({"c": Array(np.full(3, float(counter["rounds"] + 1), np.float32))})
    return Message(RecordDict(), reply_to=msg)


def _msg():
    return Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=7, message_type="train")


def test_state_is_restored_after_a_restart_and_only_for_the_same_experiment(tmp_path):
    context = _context(tmp_path)
    for _ in range(3):
        persistent_state_mod(_msg(), context, _train)
    assert state_path(context) == tmp_path / "partition-3.state" and state_path(context).is_file()
    assert not list(tmp_path.glob("*.tmp"))  # written atomically

    restarted = _context(tmp_path)  # a SuperNode that came back: empty state
    persistent_state_mod(_msg(), restarted, _train)
    assert restarted.state["counter"]["rounds"] == 4  # it carried on from round 3
    np.testing.assert_array_equal(restarted.state["ci"]["c"].numpy(), np.full(3, 4.0))

    resumed = _context(tmp_path, run_config={"strategy": "scaffold", "seed": 1, "resume-from": "latest",
                                             "num-server-rounds": 30})
    persistent_state_mod(_msg(), resumed, _train)
    assert resumed.state["counter"]["rounds"] == 5  # a resume of the same experiment continues too

    other = _context(tmp_path, run_config={"strategy": "scaffold", "seed": 2})
    persistent_state_mod(_msg(), other, _train)
    assert other.state["counter"]["rounds"] == 1  # another experiment starts clean


def test_without_state_dir_nothing_is_written(tmp_path):
    context = _context(tmp_path, state_dir=False)
    persistent_state_mod(_msg(), context, _train)
    assert state_path(context) is None and not list(tmp_path.iterdir())
    assert experiment_tag({"a": 1, "resume-from": "x"}) == experiment_tag({"a": 1})
