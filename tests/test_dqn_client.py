"""The DQN client's round (fedrl_app.client.dqn): where it starts from and what it uploads, with a personal share
or a personal head."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedrl_app.agents.dqn import DQNAgent, QNetwork
from fedrl_app.client import dqn as dqn_client
from fedrl_app.client.dqn import AGENT_STATE_KEY, evaluate, global_upload, personal_start, train
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


def test_a_personal_head_is_the_clients_own_and_the_body_follows_the_share():
    received = {"body.w": torch.tensor([1.0, 2.0]), "head.w": torch.tensor([0.0])}
    own = {"body.w": torch.tensor([3.0, -2.0]), "head.w": torch.tensor([4.0])}
    start = personal_start(received, own, 0.0, frozenset({"head.w"}))
    assert start["body.w"].tolist() == [1.0, 2.0] and start["head.w"].tolist() == [4.0]
    start = personal_start(received, own, 0.5, frozenset({"head.w"}))
    assert start["body.w"].tolist() == [2.0, 0.0] and start["head.w"].tolist() == [4.0]
    with pytest.raises(ValueError, match=r"personal tensors \['tail.w'\] are not in the network"):
        personal_start(received, own, 0.0, frozenset({"tail.w"}))


@pytest.mark.parametrize("dueling", [False, True])
def test_the_head_names_are_the_output_layers(dueling):
    expected = {"value.weight", "value.bias", "advantage.weight", "advantage.bias"} if dueling else {
        "head.weight", "head.bias"}
    assert QNetwork(8, 4, 16, dueling).head_names() == expected


def _round(context: Context, cfg: RunConfig, received: dict[str, torch.Tensor], server_round: int) -> dict:
    msg = Message(content=RecordDict({keys.ARRAYS: ArrayRecord(received),
                                      keys.CONFIG: ConfigRecord({keys.SERVER_ROUND: server_round})}),
                  dst_node_id=1, message_type="train")
    return train(msg, context, cfg).content[keys.ARRAYS].to_torch_state_dict()


def _own(context: Context) -> dict[str, torch.Tensor]:
    return DQNAgent.from_bytes(context.state[AGENT_STATE_KEY]["blob"]).q.state_dict()


@pytest.mark.parametrize(("share", "head"), [(0.0, False), (0.5, False), (0.0, True)])
def test_a_client_starts_from_its_share_of_its_own_network_and_uploads_what_it_learned(share, head):
    cfg = RunConfig.from_run_config({"task": "cartpole", "steps-per-round": 60, "dqn-hidden": 16,
                                     "dqn-learning-starts": 20, "dqn-batch-size": 8,
                                     "dqn-personal-share": share, "dqn-personal-head": head})
    context = Context(run_id=7, node_id=1, node_config={"partition-id": 1, "num-partitions": 2},
                      state=RecordDict(), run_config={})
    torch.manual_seed(0)
    first = {k: v.detach().clone() for k, v in QNetwork(4, 2, 16, False).state_dict().items()}
    _round(context, cfg, first, 1)
    own = _own(context)  # the client's network after its first round
    received = {k: v + 0.01 for k, v in first.items()}  # the server's new global network
    upload = _round(context, cfg, received, 2)
    trained = _own(context)
    start = {k: own[k] if head and k.startswith("head.") else (1 - share) * received[k] + share * own[k]
             for k in received}
    for k in received:
        # what it sent is the received network plus exactly what its 60 steps of training changed
        torch.testing.assert_close(upload[k], received[k] + trained[k] - start[k], rtol=0, atol=1e-6)
        assert not torch.equal(trained[k], start[k])  # it did learn in round 2
    if share == 0.0 and not head:  # FedAvg's client: it sends its trained network itself
        assert all(torch.equal(upload[k], trained[k]) for k in received)


def test_a_client_with_a_personal_head_evaluates_the_received_body_under_its_own_head(monkeypatch):
    cfg = RunConfig.from_run_config({"task": "cartpole", "steps-per-round": 40, "dqn-hidden": 16,
                                     "dqn-learning-starts": 20, "dqn-batch-size": 8, "dqn-personal-head": True})
    context = Context(run_id=7, node_id=1, node_config={"partition-id": 0, "num-partitions": 2},
                      state=RecordDict(), run_config={})
    torch.manual_seed(0)
    received = {k: v.detach().clone() for k, v in QNetwork(4, 2, 16, False).state_dict().items()}
    _round(context, cfg, received, 1)
    own = _own(context)
    judged = {}
    monkeypatch.setattr(dqn_client, "evaluate_policy",
                        lambda net, *a, **kw: judged.update(net.state_dict()) or [1.0])
    evaluate(Message(content=RecordDict({keys.ARRAYS: ArrayRecord(received)}), dst_node_id=1,
                     message_type="evaluate"), context, cfg)
    for k in received:
        torch.testing.assert_close(judged[k], own[k] if k.startswith("head.") else received[k], rtol=0, atol=0)
    assert not torch.equal(own["head.weight"], received["head.weight"])  # the case is not trivial
