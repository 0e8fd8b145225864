"""Byzantine clients and robust aggregation on tiny tensors."""

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord

from fedrl_app.client.drills import byzantine_update, is_byzantine
from fedrl_app.config import RunConfig
from strategies import FedAvg, FedMedian, FedTrimmedAvg, Krum
from tests.helpers import FakeGrid, arrays, reply


def test_byzantine_partitions_and_updates():
    cfg = RunConfig(byzantine_fraction=0.2)
    assert [is_byzantine(cfg, p, 10) for p in range(10)] == [True, True] + [False] * 8
    net = torch.nn.Linear(2, 1)
    g = [torch.zeros_like(p) for p in net.parameters()]
    with torch.no_grad():
        net.weight.fill_(1.0)
        net.bias.fill_(2.0)
    byzantine_update(g, net, "sign-flip", 10.0)
    assert net.weight.tolist() == [[-1.0, -1.0]] and net.bias.tolist() == [-2.0]
    byzantine_update(g, net, "scale", 3.0)
    assert net.weight.tolist() == [[-3.0, -3.0]]


@pytest.mark.parametrize("strategy", [FedMedian(), FedTrimmedAvg(beta=0.2), Krum(num_malicious_nodes=1)],
                         ids=["median", "trimmed", "krum"])
def test_robust_rules_ignore_one_attacker_that_fedavg_follows(strategy):
    """Four honest clients near 1.0 and one at −100: the robust rules stay near 1, FedAvg does not."""
    def replies():  # fresh each time: Flower's FedMedian pops the arrays out of the messages
        return [reply(n, arrays(w=[1.0 + 0.01 * n]), 10) for n in range(1, 5)] + [reply(9, arrays(w=[-100.0]), 10)]

    fedavg = FedAvg()
    for s in (strategy, fedavg):
        list(s.configure_train(1, arrays(w=[0.0]), ConfigRecord({}), FakeGrid([1, 2, 3, 4, 9])))
    robust, _ = strategy.aggregate_train(1, replies())
    plain, _ = fedavg.aggregate_train(1, replies())
    assert 1.0 <= float(robust["w"].numpy()[0]) <= 1.05
    assert float(plain["w"].numpy()[0]) < -15  # the mean is dragged far off


@pytest.mark.parametrize("attack, reason", [
    ("nan", r"non-finite|NaN"),
    ("wrong-shape", r"'arrays\[w\]' is float32\[1\], expected float32\[1, 2\]"),
    ("pickle-exploit", r"global '(posix|os)\.system'.*not in the allowlist"),
])
def test_malformed_replies_are_refused_and_the_round_goes_on(attack, reason, monkeypatch):
    import os
    import re

    from fedrl_app.client.drills import malformed_reply

    bad = reply(1, arrays(w=[[1.0, 2.0]], b=[0.5]), 10)
    malformed_reply(bad.content, attack)
    calls = []  # had the server unpickled the exploit, os.system would have been called
    for module in (os, __import__(os.name)):  # the pickle names posix.system (os.system's home)
        monkeypatch.setattr(module, "system", lambda cmd: calls.append(cmd))
    s = FedAvg()
    list(s.configure_train(1, arrays(w=[[0.0, 0.0]], b=[0.0]), ConfigRecord({}), FakeGrid([1, 2])))
    new, _ = s.aggregate_train(1, [bad, reply(2, arrays(w=[[4.0, 4.0]], b=[1.0]), 10)])
    np.testing.assert_array_equal(new["w"].numpy(), [[4.0, 4.0]])  # the good client's model alone
    ((node, why),) = s.rounds[1].dropped
    assert node == 1 and re.search(reason, why), why
    assert calls == []  # nothing in the payload ran
