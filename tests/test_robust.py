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


def test_claimed_examples_are_capped_by_the_partition_size_or_the_median_rule():
    from flwr.app import ConfigRecord

    from tests.helpers import FakeGrid, arrays, reply

    s = FedAvg(fraction_train=1.0)
    list(s.configure_train(1, arrays(w=[0.0]), ConfigRecord({}), FakeGrid([1, 2, 3, 4])))
    s.configure_example_caps({1: 100, 2: 100})  # partitions 3 and 4: unknown sizes
    s._recent_claims.extend([150.0, 150.0])  # two claims accepted in earlier rounds
    replies = [reply(1, arrays(w=[1.0]), 100), reply(2, arrays(w=[1.0]), 10**12), reply(3, arrays(w=[1.0]), 200),
               reply(4, arrays(w=[5.0]), 10**9)]
    out, _ = s.aggregate_train(1, replies)
    # node 2 clipped to its partition's 100; node 4, of unknown size, to 3 × the median of the earlier claims and
    # this round's (150, 150, 100, 10¹², 200, 10⁹): median 175, cap 525
    claims = {r.node_id: r.metrics["num-examples"] for r in s.rounds[1].reports}
    assert claims == {1: 100, 2: 100, 3: 200, 4: 525}
    assert s.rounds[1].extra["examples-clipped"] == 2
    expected = (100 + 100 + 200 + 5.0 * 525) / 925
    assert float(out["w"].numpy()[0]) == pytest.approx(expected)


def test_a_weight_inflating_client_is_outvoted_once_capped():
    from flwr.app import ConfigRecord

    from tests.helpers import FakeGrid, arrays, reply

    s = FedAvg(fraction_train=1.0)
    list(s.configure_train(1, arrays(w=[0.0]), ConfigRecord({}), FakeGrid(list(range(1, 11)))))
    # 8 honest clients at +1 with ~5000 examples, 2 inflating ones at +100 claiming 10¹²; no known sizes
    honest = [reply(n, arrays(w=[1.0]), 5000 + 100 * n) for n in range(1, 9)]
    out, _ = s.aggregate_train(1, honest + [reply(n, arrays(w=[100.0]), 10**12) for n in (9, 10)])
    # each claim is capped at 3 × the median (~5,500): the two hold 6/14 of the weight, not all of it
    assert float(out["w"].numpy()[0]) == pytest.approx(1 + 99 * 6 / 14, rel=0.05)


def test_the_metadata_bomb_drill_is_small_and_refused_at_once():
    import pickle
    import time

    from flwr.app import RecordDict

    from fedrl_app.client.drills import malformed_reply
    from fedrl_app.protocol.metadata import ClientMetadata, MetadataError, encode_metadata, read_metadata

    content = RecordDict({"metadata": encode_metadata(ClientMetadata(partition_id=0, num_examples=1,
                                                                     train_time_s=0.1))})
    malformed_reply(content, "metadata-bomb")
    assert len(content["metadata"]["payload"]) < 4096
    start = time.perf_counter()
    with pytest.raises(MetadataError, match="controller_state"):
        read_metadata(content)
    assert time.perf_counter() - start < 0.1
    assert pickle.loads(content["metadata"]["payload"]).partition_id == 0
