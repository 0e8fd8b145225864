"""Clustering by update direction: k by silhouette, one model per cluster, personalised routing."""

import numpy as np
from flwr.app import ConfigRecord

from fedrl_app.protocol.metadata import ClientMetadata, encode_metadata
from strategies import Clustered, FedAvg
from strategies.clustering import choose_clusters
from tests.helpers import FakeGrid, arrays, reply


def test_two_opposite_groups_are_found():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50)
    dirs = np.stack([a + 0.05 * rng.normal(size=50) for _ in range(4)] + [b + 0.05 * rng.normal(size=50) for _ in range(4)])
    labels, score = choose_clusters(dirs, max_clusters=4, min_silhouette=0.05, seed=0)
    assert len(set(labels[:4])) == 1 and len(set(labels[4:])) == 1 and labels[0] != labels[4]
    assert score > 0.8


def test_unstructured_directions_stay_one_cluster():
    dirs = np.random.default_rng(1).normal(size=(8, 500))  # nearly orthogonal: no cluster structure
    labels, score = choose_clusters(dirs, max_clusters=4, min_silhouette=0.2, seed=0)
    assert set(labels) == {0} and -1.0 <= score < 0.2  # the rejected best score is still reported


def test_clients_get_their_cluster_model_after_reclustering():
    s = Clustered(FedAvg(**Clustered.required_settings), cluster_every=1, max_clusters=3)
    grid = FakeGrid([1, 2, 3, 4])
    x0 = arrays(w=[0.0, 0.0])
    msgs = list(s.configure_train(1, x0, ConfigRecord({}), grid))
    assert sorted(m.metadata.dst_node_id for m in msgs) == [1, 2, 3, 4]
    # nodes 1, 2 move along +e0; nodes 3, 4 along +e1
    ups = {1: [1.0, 0.0], 2: [1.1, 0.0], 3: [0.0, 2.0], 4: [0.0, 2.2]}
    s.aggregate_train(1, [reply(n, arrays(w=u), 10) for n, u in ups.items()])
    assert s.rounds[1].extra["clusters"] == 2
    assert s.rounds[1].extra["silhouette"] > 0.9  # two tight, orthogonal groups
    assert s.assignment[1] == s.assignment[2] != s.assignment[3] == s.assignment[4]
    # both new clusters start from the round's aggregate (all members shared one model before)
    for c in s.models:
        np.testing.assert_allclose(s.models[c]["w"], [0.525, 1.05])
    msgs = list(s.configure_train(2, x0, ConfigRecord({}), grid))
    s.aggregate_train(2, [reply(n, arrays(w=np.array(u) * 10), 10) for n, u in ups.items()])
    c12, c34 = s.assignment[1], s.assignment[3]
    np.testing.assert_allclose(s.models[c12]["w"], [10.5, 0.0])   # mean of its members only
    np.testing.assert_allclose(s.models[c34]["w"], [0.0, 21.0])


def test_directions_are_summed_over_the_window_between_reclusterings():
    s = Clustered(FedAvg(**Clustered.required_settings), cluster_every=2, max_clusters=3)
    grid = FakeGrid([1, 2, 3, 4])
    x0 = arrays(w=[0.0, 0.0])
    list(s.configure_train(1, x0, ConfigRecord({}), grid))
    # round 1 alone would split {1, 3} from {2, 4}; the two rounds' sums split {1, 2} from {3, 4}
    first = {1: [1.0, 0.0], 2: [0.0, 1.0], 3: [1.0, 0.0], 4: [0.0, 1.0]}
    s.aggregate_train(1, [reply(n, arrays(w=u), 10) for n, u in first.items()])
    assert s.rounds[1].extra["clusters"] == 1 and "silhouette" not in s.rounds[1].extra
    start = s.models[0]["w"].copy()
    list(s.configure_train(2, arrays(w=start), ConfigRecord({}), grid))
    second = {1: [3.0, 0.0], 2: [3.0, -1.0], 3: [0.0, 3.0], 4: [-1.0, 3.0]}
    s.aggregate_train(2, [reply(n, arrays(w=start + np.array(u)), 10) for n, u in second.items()])
    np.testing.assert_allclose(s._previous_directions[2], [3.0, 0.0])  # [0, 1] + [3, -1]
    assert s.assignment[1] == s.assignment[2] != s.assignment[3] == s.assignment[4]
    assert s.directions == {}  # the next window starts empty


class PartitionGrid(FakeGrid):
    """A grid that knows its nodes' partitions, as PartitionOrderGrid does (node id -> partition)."""

    def __init__(self, partitions: dict[int, int]) -> None:
        super().__init__(sorted(partitions, key=partitions.get))
        self.partitions = dict(partitions)


def test_a_resumed_run_finds_each_client_by_partition_under_new_node_ids():
    s = Clustered(FedAvg(**Clustered.required_settings), cluster_every=1, max_clusters=3)
    big = 2**63 + 5  # Flower node ids are uint64: they must survive the int64 checkpoint tensors
    grid = FakeGrid([1, 2, 3, big])  # no partitions known from the grid: the replies' metadata tells them
    list(s.configure_train(1, arrays(w=[0.0, 0.0]), ConfigRecord({}), grid))
    ups = {1: [1.0, 0.0], 2: [1.1, 0.0], 3: [0.0, 2.0], big: [0.0, 2.2]}
    metadata = [encode_metadata(ClientMetadata(partition_id=i, num_examples=10 + i, train_time_s=0.1)) for i in range(4)]
    s.aggregate_train(1, [reply(n, arrays(w=u), 10 + i, metadata=metadata[i]) for i, (n, u) in enumerate(ups.items())])
    assert s.partition_of == {1: 0, 2: 1, 3: 2, big: 3}
    state = s.state_dict()
    assert set(state) == {"clustering", *(f"clustering/model-{c}" for c in s.models)}
    assert state["clustering"]["partitions"].tolist() == [0, 1, 2, 3]
    assert state["clustering"]["nodes"].view(np.uint64).tolist() == [1, 2, 3, big]

    # the resumed run: the SuperLink drew new node ids; the grid knows which partition each one is
    fresh = Clustered(FedAvg(**Clustered.required_settings), cluster_every=1, max_clusters=3)
    fresh.load_state_dict(state)
    fresh.round_offset = 1
    for c in s.models:
        np.testing.assert_array_equal(fresh.models[c]["w"], s.models[c]["w"])
    assert all(inner.round_offset == 1 for inner in fresh.cluster_strategies.values())
    new_ids = {70: 3, 71: 2, 72: 1, 73: 0}  # node -> partition
    msgs = list(fresh.configure_train(1, arrays(w=[9.0, 9.0]), ConfigRecord({}), PartitionGrid(new_ids)))
    sent = {m.metadata.dst_node_id: m.content["arrays"]["w"].numpy().tolist() for m in msgs}
    old_node = dict(zip(range(4), [1, 2, 3, big]))  # partition -> node id of the first run
    assert sorted(sent) == sorted(new_ids)  # only live nodes are addressed
    for node, pid in new_ids.items():  # each client gets its own cluster's model back, and its example count
        assert fresh.assignment[node] == s.assignment[old_node[pid]]
        assert sent[node] == s.models[s.assignment[old_node[pid]]]["w"].tolist()
        assert fresh.examples[node] == s.examples[old_node[pid]]


def test_a_checkpoint_without_partitions_restores_by_node_id():
    """Replies whose partition never became known (and checkpoints from before partitions were stored)."""
    s = Clustered(FedAvg(**Clustered.required_settings), cluster_every=1, max_clusters=3)
    grid = FakeGrid([1, 2, 3, 4])
    list(s.configure_train(1, arrays(w=[0.0, 0.0]), ConfigRecord({}), grid))
    ups = {1: [1.0, 0.0], 2: [1.1, 0.0], 3: [0.0, 2.0], 4: [0.0, 2.2]}
    s.aggregate_train(1, [reply(n, arrays(w=u), 10) for n, u in ups.items()])
    state = s.state_dict()
    del state["clustering"]["partitions"]
    fresh = Clustered(FedAvg(**Clustered.required_settings), cluster_every=1, max_clusters=3)
    fresh.load_state_dict(state)
    assert fresh.assignment == s.assignment and fresh.examples == s.examples
    assert {c: sorted(m) for c, m in fresh.members.items()} == {c: sorted(m) for c, m in s.members.items()}


def test_clusters_are_never_re_sorted_across_once_formed():
    s = Clustered(FedAvg(**Clustered.required_settings), cluster_every=1, max_clusters=3)
    grid = FakeGrid([1, 2, 3, 4])
    x0 = arrays(w=[0.0, 0.0])
    list(s.configure_train(1, x0, ConfigRecord({}), grid))
    ups = {1: [1.0, 0.0], 2: [1.1, 0.0], 3: [0.0, 2.0], 4: [0.0, 2.2]}
    s.aggregate_train(1, [reply(n, arrays(w=u), 10) for n, u in ups.items()])
    assignment = dict(s.assignment)
    strategies = dict(s.cluster_strategies)
    # round 2: measured from their own clusters' models, 1 and 3 now move alike, as do 2 and 4 (a global
    # re-split would pair them across clusters); directions of different clusters do not compare: nothing churns
    later = {1: [1.0, 0.0], 2: [0.0, 1.0], 3: [1.0, 0.0], 4: [0.0, 1.0]}
    list(s.configure_train(2, x0, ConfigRecord({}), grid))
    s.aggregate_train(2, [reply(n, arrays(w=np.add(s.models[assignment[n]]["w"], u)), 10) for n, u in later.items()])
    assert s.assignment == assignment and s.history[-1]["kept"] is True
    assert s.history[-1]["silhouette"] is None and "silhouette" not in s.rounds[2].extra  # no cluster had 3 clients
    assert all(s.cluster_strategies[c] is strategies[c] for c in strategies)  # not re-created from the template


def test_a_cluster_splits_further_on_its_own_members_directions():
    s = Clustered(FedAvg(**Clustered.required_settings), cluster_every=1, max_clusters=3)
    grid = FakeGrid([1, 2, 3, 4, 5, 6])
    list(s.configure_train(1, arrays(w=[0.0, 0.0, 0.0, 0.0]), ConfigRecord({}), grid))
    first = {1: [1.0, 0, 0, 0], 2: [1.1, 0, 0, 0], 3: [0.9, 0, 0, 0], 4: [1.0, 0.05, 0, 0], 5: [0, 2.0, 0, 0],
             6: [0, 2.1, 0, 0]}
    s.aggregate_train(1, [reply(n, arrays(w=u), 10) for n, u in first.items()])
    assert s.assignment[1] == s.assignment[2] == s.assignment[3] == s.assignment[4] != s.assignment[5] == s.assignment[6]
    big, small = s.assignment[1], s.assignment[5]
    parent = s.models[big]["w"].copy()
    small_strategy = s.cluster_strategies[small]
    # round 2: inside the big cluster, {1, 2} and {3, 4} now pull apart; the pair {5, 6} is too small to split
    second = {1: [0, 0, 1.0, 0], 2: [0, 0, 1.2, 0], 3: [0, 0, 0, 1.0], 4: [0, 0, 0, 0.9], 5: [0, 1.0, 0, 0],
              6: [0, 0, 1.0, 0]}
    list(s.configure_train(2, arrays(w=[0.0, 0.0, 0.0, 0.0]), ConfigRecord({}), grid))
    s.aggregate_train(2, [reply(n, arrays(w=np.add(s.models[s.assignment[n]]["w"], u)), 10) for n, u in second.items()])
    assert s.assignment[1] == s.assignment[2] != s.assignment[3] == s.assignment[4]
    assert {s.assignment[1], s.assignment[3]} & {small} == set() and s.assignment[5] == s.assignment[6] == small
    assert s.cluster_strategies[small] is small_strategy
    assert s.rounds[2].extra["clusters"] == 3 and s.history[-1]["kept"] is False
    assert s.history[-1]["silhouette"] > 0.9
    moved = s.assignment[3] if s.assignment[3] != big else s.assignment[1]
    # the new cluster starts from its parent's aggregate of round 2 (the mean of 1-4 moved from `parent`)
    np.testing.assert_allclose(s.models[moved]["w"], parent + np.array([0, 0, 0.55, 0.475]))
