"""Small helpers shared by the strategies: array arithmetic, staleness weights, views of a Grid, checkpoint encoding."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from flwr.serverapp import Grid


def mean_arrays(arrays: list[dict[str, np.ndarray]], weights: list[float] | None = None) -> dict[str, np.ndarray]:
    """Weighted mean of dicts of arrays (uniform if `weights` is None), in float64, cast back."""
    w = np.full(len(arrays), 1.0 / len(arrays)) if weights is None else np.asarray(weights, float) / np.sum(weights)
    return {k: sum(wi * a[k].astype(np.float64) for wi, a in zip(w, arrays)).astype(arrays[0][k].dtype) for k in arrays[0]}


def squared_norm(arrays: dict[str, np.ndarray]) -> float:
    """‖v‖² of a dict of arrays seen as one vector (float64)."""
    return float(sum(np.sum(np.square(a.astype(np.float64))) for a in arrays.values()))


def distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """‖a − b‖₂ over the keys of `b`, in float64 (e.g. the norm of an update, model returned − model sent)."""
    return float(np.sqrt(squared_norm({k: a[k].astype(np.float64) - v.astype(np.float64) for k, v in b.items()})))


def staleness_weight(tau: int, exponent: float) -> float:
    """s(τ) = (1 + τ)^(−a): the weight of an update computed on a model τ versions old."""
    if tau < 0:
        raise ValueError(f"staleness must be >= 0, got {tau}")
    return float((1.0 + tau) ** (-exponent))


@contextmanager
def seeded_sampling(seed: int | None, server_round: int, phase: str) -> Iterator[None]:
    """Let Flower's `sample_nodes` draw from a stream fixed by (seed, round, phase), then restore `random`.

    Flower samples with the module-level `random`, which nothing seeds; with a node list in a fixed
    order (`fedrl_app.server.reply_order.PartitionOrderGrid`), a fixed stream picks the same nodes in
    two runs of a seed, and a resumed run picks what the uninterrupted one would have. The global
    stream is put back afterwards, so nothing else that draws from `random` is moved. `seed=None`:
    Flower's own unseeded draw.
    """
    if seed is None:
        yield
        return
    state = random.getstate()
    random.seed(f"fedrl-sampling:{seed}:{server_round}:{phase}")  # str seeds hash with SHA-512: any process agrees
    try:
        yield
    finally:
        random.setstate(state)


class GridView:
    """A Grid seen through a wrapper: every attribute is the wrapped Grid's unless a subclass overrides it.

    Flower's strategies only call the Grid's methods (no isinstance check), so a view need not
    re-implement the abstract Grid interface method by method.
    """

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def __getattr__(self, name: str):
        if name == "_grid":  # not set yet (copy/unpickle): no recursion
            raise AttributeError(name)
        return getattr(self._grid, name)


def node_partitions(grid: Grid) -> dict[int, int]:
    """Node id → partition id for the grid's nodes whose partition the grid knows.

    A grid that knows them has a `partitions` dict (node id → partition): `fedrl_app.server.reply_order.
    PartitionOrderGrid` asks each node once; views (`GridView`) pass it through. A plain Grid has node ids
    only, which the SuperLink draws anew for every run (so for a resumed one): {}.
    """
    known = getattr(grid, "partitions", None) or {}
    return {n: int(known[n]) for n in grid.get_node_ids() if n in known}


class SubsetGrid(GridView):
    """A Grid restricted to some nodes, so a wrapped strategy's sampling picks only among them."""

    def __init__(self, grid: Grid, node_ids: list[int]) -> None:
        super().__init__(grid)
        self._node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        """The nodes of this view (a copy)."""
        return list(self._node_ids)


def blob_to_array(blob: bytes) -> np.ndarray:
    """Bytes as a uint8 array (a checkpoint group holds arrays only)."""
    return np.frombuffer(blob, dtype=np.uint8).copy()


def array_to_blob(array: np.ndarray) -> bytes:
    """Inverse of `blob_to_array`."""
    return np.asarray(array, dtype=np.uint8).tobytes()


def rng_to_array(rng: np.random.Generator) -> np.ndarray:
    """A numpy Generator's exact state, for a checkpoint."""
    return blob_to_array(json.dumps(rng.bit_generator.state).encode())


def rng_from_array(rng: np.random.Generator, array: np.ndarray) -> None:
    """Restore a Generator to the state `rng_to_array` saved."""
    rng.bit_generator.state = json.loads(array_to_blob(array).decode())
