"""Clustered: group clients by the direction of their updates; one model per cluster.

Every `cluster_every` rounds the server takes each client's update direction over that
window (the sum of the updates it sent since the last re-clustering: one sparse top-k
update is mostly noise, the window's sum is the client's drift; a client that sent
nothing in the window keeps its previous window's direction), and runs KMeans on the
unit-normalised directions (Euclidean distance between unit vectors is a monotone
function of cosine similarity) for k = 2..`max_clusters`, keeping the k with the best silhouette score (cosine metric) if that score reaches
`min_silhouette`, else one cluster. Each cluster gets its own copy of the wrapped
strategy and its own model, initialised as the example-weighted mean of its members'
previous models; clients train and are evaluated on their cluster's model, so client
evaluation measures personalised accuracy. After the first split a cluster only splits further, on
its own members' directions: updates that start from different clusters' models do not compare. On
rotated MNIST (benchmarks/data_shift.py, 3 seeds) a global re-split every 5 rounds found the four
rotation groups at round 5 (ARI 1.0 in every seed), then scrambled them at round 10 (ARI 0.24-0.45): by
then each cluster's model fits its rotation, so what is left in the directions is label skew.

Clients are known by node id within a run, and by partition across runs: node ids are drawn anew by
the SuperLink for every run, a resumed one included, so a checkpoint stores each client's cluster under
its partition (from the grid, `strategy_utils.node_partitions`, or its replies' metadata), and KMeans
sees the clients in partition order.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.supercore import log
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from fedrl_app.protocol.records import to_numpy, to_record
from strategies.reply_guard import RoundLog
from strategies.strategy_utils import SubsetGrid, mean_arrays, node_partitions
from strategies.wrapper import CheckedStrategy, StrategyState, StrategyWrapper


def choose_clusters(directions: np.ndarray, max_clusters: int, min_silhouette: float, seed: int) -> tuple[np.ndarray, float]:
    """Labels for each row of `directions` and the best silhouette over k = 2..max_clusters.

    All labels are 0 (one cluster) when that best silhouette is below `min_silhouette`; the score
    is returned either way, so a caller can say how far from clustering the federation was.
    """
    n = len(directions)
    unit = directions / np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)
    best_labels, best_score = np.zeros(n, dtype=int), -1.0
    for k in range(2, min(max_clusters, n - 1) + 1):
        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(unit)
        if len(set(labels)) < 2:
            continue
        score = float(silhouette_score(unit, labels, metric="cosine"))
        if score > best_score:
            best_labels, best_score = labels, score
    if best_score < min_silhouette:
        return np.zeros(n, dtype=int), best_score
    return best_labels, best_score


class Clustered(StrategyWrapper):
    """One wrapped-strategy instance and one model per cluster of similar clients.

    Parameters
    ----------
    strategy : CheckedStrategy
        FedAvg, FedProx or DrlCompress, deep-copied per cluster; built with `required_settings`
        (any cluster, however small, trains and evaluates, and every client evaluates).
    cluster_every : int (default: 5)
        Re-cluster after every this many rounds.
    max_clusters : int (default: 4)
        Largest k tried.
    min_silhouette : float (default: 0.05)
        Below this best silhouette, all clients form one cluster.
    seed : int (default: 0)
        KMeans seed.
    """

    required_settings = {"min_train_nodes": 1, "min_evaluate_nodes": 1, "min_available_nodes": 1,
                         "fraction_evaluate": 1.0}  # personalised accuracy needs every client's view
    state_prefix = "clustering"

    def __init__(self, strategy: CheckedStrategy, *, cluster_every: int = 5, max_clusters: int = 4,
                 min_silhouette: float = 0.05, seed: int = 0) -> None:
        super().__init__(strategy)
        self.cluster_every, self.max_clusters = cluster_every, max_clusters
        self.min_silhouette, self.seed = min_silhouette, seed
        self._rounds: dict[int, RoundLog] = defaultdict(RoundLog)  # merged over the clusters
        self.assignment: dict[int, int] = {}                 # node -> cluster
        self.models: dict[int, dict[str, np.ndarray]] = {}   # cluster -> model
        self.members: dict[int, list[int]] = {}
        self.cluster_strategies: dict[int, CheckedStrategy] = {}
        self.directions: dict[int, np.ndarray] = {}          # node -> sum of its updates in this window
        self._previous_directions: dict[int, np.ndarray] = {}  # node -> its direction in the last window
        self.examples: dict[int, float] = {}
        self.partition_of: dict[int, int] = {}               # node -> partition (the grid's, else its replies')
        self._restored: dict[int, tuple[int, float]] = {}    # partition -> (cluster, examples) from a checkpoint
        self.history: list[dict] = []                        # one entry per (re)clustering
        self._sent: dict[int, dict[str, np.ndarray]] = {}

    @property
    def rounds(self) -> dict[int, RoundLog]:
        """Per-round logs merged over the clusters' strategies."""
        return self._rounds

    def wrapped_strategies(self) -> list[CheckedStrategy]:
        """The template and every cluster's copy (a resume's round offset reaches them all)."""
        return [self.strategy, *self.cluster_strategies.values()]

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(INFO, "\t├──> Clustered: every %d rounds, k ≤ %d, min silhouette %s", self.cluster_every,
            self.max_clusters, self.min_silhouette)
        self.strategy.summary()

    def own_state_dict(self) -> StrategyState:
        """Assignment (node and partition → cluster), examples per node, each cluster's model and its strategy's
        state. A resumed run finds its clients by partition (-1: unknown; then by node id)."""
        nodes = sorted(self.assignment, key=self._client_order)
        state: StrategyState = {"clustering": {
            # node ids are uint64: stored bit for bit as int64 (checkpoints hold torch tensors)
            "nodes": np.asarray(nodes, dtype=np.uint64).view(np.int64),
            "partitions": np.asarray([self.partition_of.get(n, -1) for n in nodes], dtype=np.int64),
            "clusters": np.asarray([self.assignment[n] for n in nodes], dtype=np.int64),
            "examples": np.asarray([self.examples.get(n, 1.0) for n in nodes], dtype=np.float64),
        }}
        for c, model in self.models.items():
            state[f"clustering/model-{c}"] = dict(model)
            for group, arrays in self.cluster_strategies[c].state_dict().items():
                state[f"clustering/strategy-{c}/{group}"] = dict(arrays)
        return state

    def load_own_state_dict(self, state: StrategyState) -> None:
        """Restore the clusters, their models and their strategies (a fresh copy of the template each)."""
        if "clustering" not in state:
            return
        group = state["clustering"]
        nodes = [int(n) for n in np.asarray(group["nodes"], dtype=np.int64).view(np.uint64)]
        partitions = [int(p) for p in group.get("partitions", np.full(len(nodes), -1))]
        self.assignment, self.examples, self._restored = {}, {}, {}
        for n, pid, c, e in zip(nodes, partitions, group["clusters"], group["examples"]):
            if pid >= 0:  # claimed by whichever node reports this partition in the resumed run
                self._restored[pid] = (int(c), float(e))
            else:
                self.assignment[n], self.examples[n] = int(c), float(e)
        self.members = defaultdict(list)
        for n, c in self.assignment.items():
            self.members[c].append(n)
        self.members = dict(self.members)
        self.models = {int(k.removeprefix("clustering/model-")): dict(v) for k, v in state.items()
                       if k.startswith("clustering/model-")}
        self.cluster_strategies = {}
        for c in self.models:
            inner = copy.deepcopy(self.strategy)
            prefix = f"clustering/strategy-{c}/"
            inner.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})
            self.cluster_strategies[c] = inner

    def _ensure_clusters(self, arrays: ArrayRecord, grid: Grid) -> None:
        nodes = list(grid.get_node_ids())  # by partition under PartitionOrderGrid: the same members' order every run
        self.partition_of.update(node_partitions(grid))
        if not self.models:
            self.models = {0: to_numpy(arrays)}
            self.members = {0: nodes}
            self.assignment = {n: 0 for n in nodes}
            self.cluster_strategies = {0: copy.deepcopy(self.strategy)}
        for n in nodes:  # a restored partition's node rejoins its cluster; nodes that joined later start in 0
            if n not in self.assignment:
                restored = self._restored.pop(self.partition_of.get(n, -1), None)
                c = restored[0] if restored is not None and restored[0] in self.models else 0
                if restored is not None:
                    self.examples[n] = restored[1]
                self.assignment[n] = c
                self.members.setdefault(c, []).append(n)

    def _client_order(self, node: int) -> tuple[int, int, int]:
        """Sort key: by partition where known (the same order in every run), then unknown nodes by id."""
        pid = self.partition_of.get(node)
        return (0, pid, node) if pid is not None else (1, 0, node)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> Iterable[Message]:
        """Each cluster's strategy addresses its members with the cluster's model."""
        self._ensure_clusters(arrays, grid)
        messages: list[Message] = []
        self._sent = {}
        for c, inner in self.cluster_strategies.items():
            if not self.members.get(c):
                continue
            self._sent[c] = self.models[c]
            messages += list(inner.configure_train(server_round, to_record(self.models[c]), config,
                                                   SubsetGrid(grid, self.members[c])))
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate per cluster; re-cluster every `cluster_every` rounds; return the mean model."""
        by_cluster: dict[int, list[Message]] = defaultdict(list)
        for msg in replies:
            by_cluster[self.assignment.get(msg.metadata.src_node_id, -1)].append(msg)
        true_round = server_round + self.round_offset
        merged = self.rounds[true_round]
        for c, inner in self.cluster_strategies.items():
            if c not in self._sent:
                continue
            new, _ = inner.aggregate_train(server_round, by_cluster.get(c, []))
            log_c = inner.rounds[true_round]
            merged.reports += log_c.reports
            merged.dropped += log_c.dropped
            for k, v in log_c.extra.items():
                if k == "client-times-s":
                    merged.extra.setdefault(k, {}).update(v)
                elif k == "round-sim-time-s":  # the clusters' rounds run side by side
                    merged.extra[k] = max(merged.extra.get(k, 0.0), v)
                elif isinstance(v, (int, float)):
                    summed = k.startswith(("sync-", "senders", "clients-"))
                    merged.extra[k] = merged.extra.get(k, 0) + v if summed else v
            accepted = {r.node_id for r in log_c.reports}
            for node, pid in log_c.partition_of().items():  # the first partition a node reported is kept
                self.partition_of.setdefault(node, pid)
            for msg in by_cluster.get(c, []):
                node = msg.metadata.src_node_id
                if node not in accepted:
                    continue
                delta = inner.reply_delta(msg, self._sent[c])
                if delta is not None:
                    flat = np.concatenate([v.ravel() for v in delta.values()]).astype(np.float64)
                    self.directions[node] = self.directions[node] + flat if node in self.directions else flat
                self.examples[node] = float(next(iter(msg.content.metric_records.values()))["num-examples"])
            if new is not None:
                self.models[c] = to_numpy(new)
        if dropped := by_cluster.get(-1):
            merged.dropped += [(m.metadata.src_node_id, "node is in no cluster") for m in dropped]
        if true_round % self.cluster_every == 0 and self._recluster(true_round) \
                and self.history[-1]["silhouette"] is not None:
            merged.extra["silhouette"] = self.history[-1]["silhouette"]  # best over k ≥ 2, accepted or not
        merged.extra["clusters"] = len([c for c in self.members if self.members[c]])
        merged.extra["cluster-of-node"] = {str(n): c for n, c in sorted(self.assignment.items())}
        merged.extra["cluster-of-partition"] = {str(self.partition_of[n]): c for n, c in sorted(
            self.assignment.items(), key=lambda item: self._client_order(item[0])) if n in self.partition_of}
        return to_record(self._mean_model()), None

    def _mean_model(self) -> dict[str, np.ndarray]:
        clusters = [c for c in self.members if self.members[c]]
        weights = [sum(self.examples.get(n, 1.0) for n in self.members[c]) for c in clusters]
        return mean_arrays([self.models[c] for c in clusters], weights)

    def _recluster(self, server_round: int) -> bool:
        """Split the clients by their update directions over the window; False if fewer than 3 have one.

        The first split compares every client. Once there are clusters, a client's update starts from its
        cluster's model, so directions compare only within a cluster: each cluster may split further on
        its own members' directions, up to `max_clusters` in all, and clusters are never merged or
        re-sorted across (CFL's rule, Sattler et al. 2020).
        """
        directions = {**self._previous_directions, **self.directions}
        self._previous_directions, self.directions = directions, {}
        if len([n for n in self.assignment if n in directions]) < 3:
            return False
        live = [c for c in self.members if self.members[c]]
        if len(live) > 1:
            return self._refine(server_round, directions, live)
        nodes = sorted((n for n in self.assignment if n in directions), key=self._client_order)
        labels, score = choose_clusters(np.stack([directions[n] for n in nodes]), self.max_clusters,
                                        self.min_silhouette, self.seed + server_round)
        new_members: dict[int, list[int]] = defaultdict(list)
        for n, label in zip(nodes, labels):
            new_members[int(label)].append(n)
        for n in self.assignment:  # nodes with no direction yet keep cluster 0 of the new split
            if n not in directions:
                new_members[0].append(n)
        models, cluster_strategies = {}, {}
        for c, members in new_members.items():
            prev = [self.models[self.assignment[n]] for n in members]
            models[c] = mean_arrays(prev, [self.examples.get(n, 1.0) for n in members])
            cluster_strategies[c] = copy.deepcopy(self.strategy)
        self.models, self.members, self.cluster_strategies = models, dict(new_members), cluster_strategies
        self.assignment = {n: c for c, members in new_members.items() for n in members}
        self.history.append({"round": server_round, "k": len(new_members), "silhouette": score, "kept": False,
                             "assignment": {str(n): c for n, c in sorted(self.assignment.items())}})
        log(INFO, "round %d: %d cluster(s), sizes %s; best silhouette over k = 2..%d: %.3f (min %s)", server_round,
            len(new_members), [len(m) for m in new_members.values()], self.max_clusters, score, self.min_silhouette)
        return True

    def _refine(self, server_round: int, directions: dict[int, np.ndarray], live: list[int]) -> bool:
        """Split each cluster of ≥ 3 clients with directions whose own split clears `min_silhouette`."""
        scores: list[float] = []
        next_id = max(self.models) + 1
        for c in live:
            budget = self.max_clusters - len([x for x in self.members if self.members[x]])
            nodes = sorted((n for n in self.members[c] if n in directions), key=self._client_order)
            if budget < 1 or len(nodes) < 3:
                continue
            labels, score = choose_clusters(np.stack([directions[n] for n in nodes]), 1 + budget,
                                            self.min_silhouette, self.seed + server_round)
            scores.append(score)
            for label in sorted(set(labels.tolist()))[1:]:  # label 0 stays in c, with c's strategy
                moved = [n for n, lab in zip(nodes, labels) if lab == label]
                self.models[next_id] = {k: v.copy() for k, v in self.models[c].items()}
                self.cluster_strategies[next_id] = copy.deepcopy(self.strategy)
                self.members[next_id] = moved
                self.members[c] = [n for n in self.members[c] if n not in moved]
                self.assignment.update({n: next_id for n in moved})
                next_id += 1
        k = len([c for c in self.members if self.members[c]])
        self.history.append({"round": server_round, "k": k, "silhouette": max(scores) if scores else None,
                             "kept": k == len(live),
                             "assignment": {str(n): c for n, c in sorted(self.assignment.items())}})
        log(INFO, "round %d: %d cluster(s), sizes %s (%s)", server_round, k,
            [len(m) for m in self.members.values() if m], "kept" if k == len(live) else "refined within clusters")
        return True

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                           ) -> Iterable[Message]:
        """Every client evaluates its own cluster's model (personalised accuracy)."""
        messages: list[Message] = []
        for c, inner in self.cluster_strategies.items():
            if self.members.get(c):
                messages += list(inner.configure_evaluate(server_round, to_record(self.models[c]), config,
                                                          SubsetGrid(grid, self.members[c])))
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Per-cluster and overall personalised accuracy (example-weighted)."""
        by_cluster: dict[int, list[Message]] = defaultdict(list)
        for msg in replies:
            by_cluster[self.assignment.get(msg.metadata.src_node_id, -1)].append(msg)
        true_round = server_round + self.round_offset
        merged = self.rounds[true_round]
        total_n, total_acc = 0.0, 0.0
        for c, inner in self.cluster_strategies.items():
            metrics = inner.aggregate_evaluate(server_round, by_cluster.get(c, []))
            if metrics is None or "accuracy" not in metrics:
                continue
            n = sum(float(next(iter(m.content.metric_records.values())).get("num-examples", 0))
                    for m in by_cluster.get(c, []) if not m.has_error())
            merged.extra[f"cluster-{c}-accuracy"] = float(metrics["accuracy"])
            total_n, total_acc = total_n + n, total_acc + n * float(metrics["accuracy"])
        if total_n:
            merged.evaluate_metrics = {"accuracy": total_acc / total_n}
            merged.extra["personalized-accuracy"] = total_acc / total_n
            return MetricRecord({"accuracy": total_acc / total_n})
        return None
