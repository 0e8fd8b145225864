"""The DQN client's round (fedrl_app.client.dqn): where it starts from and what it uploads, with a personal share."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedrl_app.agents.dqn import DQNAgent, QNetwork
from fedrl_app.client.dqn import AGENT_STATE_KEY, global_upload, personal_start, train
from fedrl_app.config import RunConfig
from fedrl_app.protocol import keys


def test_personal_start_and_global_upload_exact():
    received = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.0])}
    own = {"w": torch.tensor([3.0, -2.0]), "b": torch.tensor([4.0])}
    start = personal_start(received, own, 0.25)
    assert start["w"].tolist() == [1.5, 1.0] and start["b"].tolist() == [1.0]
    assert personal_start(received, own, 0.0)["w"].tolist() == [1.0, 2.0]
    trained = {"w": torch.tensor([2.0, 1.5]), "b": torch.tensor([0.5])}
    upload = global_upload(received, start, trained)  # learned (+0.5, +0.5), (−0.5) on top of what was received
    assert upload["w"].tolist() == [1.5, 2.5] and upload["b"].tolist() == [-0.5]
    with pytest.raises(ValueError, match="differ from the client's own"):
        personal_start(received, {"w": own["w"]}, 0.5)


def _round(context: Context, cfg: RunConfig, received: dict[str, torch.Tensor], server_round: int) -> dict:
    msg = Message(content=RecordDict({keys.ARRAYS: ArrayRecord(received),
                                      keys.CONFIG: ConfigRecord({keys.SERVER_ROUND: server_round})}),
                  dst_node_id=1, message_type="train")
    return train(msg, context, cfg).content[keys.ARRAYS].to_torch_state_dict()


def _own(context: Context) -> dict[str, torch.Tensor]:
    return DQNAgent.from_bytes(context.state[AGENT_STATE_KEY]["blob"]).q.state_dict()


@pytest.mark.parametrize("share", [0.0, 0.5])
def test_a_client_starts_from_its_share_of_its_own_network_and_uploads_what_it_learned(share):
    cfg = RunConfig.from_run_config({"task": "cartpole", "steps-per-round": 60, "dqn-hidden": 16,
                                     "dqn-learning-starts": 20, "dqn-batch-size": 8,
                                     "dqn-personal-share": share})
    context = Context(run_id=7, node_id=1, node_config={"partition-id": 1, "num-partitions": 2},
                      state=RecordDict(), run_config={})
    torch.manual_seed(0)
    first = {k: v.detach().clone() for k, v in QNetwork(4, 2, 16, False).state_dict().items()}
    _round(context, cfg, first, 1)
    own = _own(context)  # the client's network after its first round
    received = {k: v + 0.01 for k, v in first.items()}  # the server's new global network
    upload = _round(context, cfg, received, 2)
    trained = _own(context)
    start = {k: (1 - share) * received[k] + share * own[k] for k in received}
    for k in received:
        # what it sent is the received network plus exactly what its 60 steps of training changed
        torch.testing.assert_close(upload[k], received[k] + trained[k] - start[k], rtol=0, atol=1e-6)
        assert not torch.equal(trained[k], start[k])  # it did learn in round 2
    if share == 0.0:  # FedAvg's client: it sends its trained network itself
        assert all(torch.equal(upload[k], trained[k]) for k in received)
