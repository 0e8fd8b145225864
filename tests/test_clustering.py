"""Clustering by update direction: k by silhouette, one model per cluster, personalised routing."""

import numpy as np
from flwr.app import ConfigRecord

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
