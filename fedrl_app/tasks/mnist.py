"""MNIST task: Dirichlet non-IID partitions (flwr-datasets), a 2-conv + 2-FC CNN, SGD training."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedrl_app.runtime.paths import MNIST_FILES, find_mnist_dir

if TYPE_CHECKING:
    from flwr_datasets import FederatedDataset

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class Net(nn.Module):
    """CNN: conv 16w and 32w (5x5, padded, each max-pooled), FC 128w, FC 10; w = `width`.

    w = 1: 215,370 parameters (0.86 MB as float32); w = 4: 3,423,498 (13.7 MB, about MobileNet V2's 3.5M),
    a model whose upload is a real share of a mobile round (benchmarks/upload_ceiling.py).
    """

    def __init__(self, width: int = 1) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be ≥ 1, got {width}")
        self.conv1 = nn.Conv2d(1, 16 * width, 5, padding=2)
        self.conv2 = nn.Conv2d(16 * width, 32 * width, 5, padding=2)
        self.fc1 = nn.Linear(32 * width * 7 * 7, 128 * width)
        self.fc2 = nn.Linear(128 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


@dataclass(frozen=True)
class DataSource:
    """Either local parquet files or a Hugging Face hub id (needs network)."""

    dataset: str
    data_files: tuple[tuple[str, str], ...] | None = None

    def federated(self, partitioners: dict) -> FederatedDataset:
        from flwr_datasets import FederatedDataset  # imported here: 1-4 s (pandas, scipy, seaborn) that a
        # ClientApp whose partition is cached, or any RL client, never needs (deployment starts one per message)

        kwargs = {"data_files": dict(self.data_files)} if self.data_files else {}
        return FederatedDataset(dataset=self.dataset, partitioners=partitioners, **kwargs)


def resolve_source(data_path: str = "") -> DataSource:
    """Map the 'data-path' config value to a data source.

    Empty: the copy shipped with the project. A directory: parquet files in it.
    'owner/name' that is not a local path: a hub data set id.
    """
    if data_path and not Path(data_path).expanduser().exists() and data_path.count("/") == 1 \
            and not data_path.startswith((".", "/", "~")):
        return DataSource(dataset=data_path)
    directory = find_mnist_dir(data_path)
    files = tuple((f.split(".")[0], str(directory / f)) for f in MNIST_FILES)
    return DataSource(dataset="parquet", data_files=files)


def _to_tensors(split) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode PNG images once into normalised float tensors."""
    images = np.stack([np.asarray(img, dtype=np.uint8) for img in split["image"]])
    x = torch.from_numpy(images).float().div_(255.0).sub_(MNIST_MEAN).div_(MNIST_STD).unsqueeze(1)
    y = torch.as_tensor(np.asarray(split["label"]), dtype=torch.long)
    return x, y


@lru_cache(maxsize=4)
def _federated_dataset(source: DataSource, num_partitions: int, alpha: float, seed: int) -> FederatedDataset:
    from flwr_datasets.partitioner import DirichletPartitioner
    partitioner = DirichletPartitioner(
        num_partitions=num_partitions, partition_by="label", alpha=alpha, seed=seed, min_partition_size=10
    )
    return source.federated({"train": partitioner})


def _cache_path(*key) -> Path:
    """Decoded partitions are cached on disk: a SuperNode starts a fresh ClientApp process every
    round, and re-partitioning plus PNG decoding took 5-15 s of each round there."""
    root = Path(os.environ.get("FEDRL_CACHE_DIR", Path.home() / ".cache" / "fedrl"))
    digest = hashlib.sha256(repr(key).encode()).hexdigest()[:24]
    return root / f"mnist-partition-{digest}.pt"


@lru_cache(maxsize=16)
def load_partition(
    source: DataSource, partition_id: int, num_partitions: int, alpha: float, seed: int, test_fraction: float,
    max_examples: int = 0,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """A client's (train, local test) tensors; identical in every process for the same arguments.

    `max_examples` > 0 keeps only the first that many examples of the (shuffled)
    partition, for fast tests; 0 keeps all. Results are cached in memory and on disk
    (`FEDRL_CACHE_DIR`, default ~/.cache/fedrl), keyed by every argument and the data files' sizes.
    """
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} outside [0, {num_partitions})")
    files = [(path, Path(path).stat().st_size) for _, path in source.data_files or ()]
    cache = _cache_path(source.dataset, files, partition_id, num_partitions, alpha, seed, test_fraction, max_examples)
    if cache.is_file():
        try:
            cached = torch.load(cache, weights_only=True)
            return (cached["x_train"], cached["y_train"]), (cached["x_test"], cached["y_test"])
        except Exception:  # a torn or stale file: rebuild it below
            pass
    result = _load_partition_uncached(source, partition_id, num_partitions, alpha, seed, test_fraction, max_examples)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        (xtr, ytr), (xte, yte) = result
        torch.save({"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte}, tmp)
        os.replace(tmp, cache)  # atomic, so concurrent clients never read half a file
    except OSError:
        pass  # a read-only home is fine: we just do not cache
    return result


def _load_partition_uncached(source, partition_id, num_partitions, alpha, seed, test_fraction, max_examples):
    fds = _federated_dataset(source, num_partitions, alpha, seed)
    partition = fds.load_partition(partition_id, "train")
    if 0 < max_examples < len(partition):
        partition = partition.shuffle(seed=seed).select(range(max_examples))
    split = partition.train_test_split(test_size=test_fraction, seed=seed)
    return _to_tensors(split["train"]), _to_tensors(split["test"])


DATA_SHIFTS = ("none", "rotate", "permute-labels")
SHIFT_GROUPS = 4


def shift_group(partition_id: int) -> int:
    """The group of a partition under a data shift: partition id mod 4 (so groups interleave over ids)."""
    return partition_id % SHIFT_GROUPS


def label_permutation(group: int) -> torch.Tensor:
    """The label map of a group under "permute-labels": the identity for group 0, a fixed random permutation
    otherwise (seeded by the group alone, so every run and process agrees)."""
    if group == 0:
        return torch.arange(10)
    return torch.from_numpy(np.random.default_rng(1_000 + group).permutation(10))


def apply_shift(data: tuple[torch.Tensor, torch.Tensor], shift: str, group: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Give a client group its own optimum: images rotated by group × 90° (rotated MNIST, as in IFCA, Ghosh
    et al. 2020), or labels relabelled by the group's permutation; "none" returns the data as it is."""
    x, y = data
    if shift == "rotate":
        return torch.rot90(x, k=group, dims=(-2, -1)).contiguous(), y
    if shift == "permute-labels":
        return x, label_permutation(group)[y]
    if shift != "none":
        raise ValueError(f"config key 'data-shift' is {shift!r}; allowed values: {list(DATA_SHIFTS)}")
    return x, y


def partition_train_sizes(source: DataSource, num_partitions: int, alpha: float, seed: int, test_fraction: float,
                          max_examples: int = 0) -> dict[int, int]:
    """Training examples of every partition, as `load_partition` splits them, without decoding an image
    (the server caps each client's claimed `num-examples` by these)."""
    fds = _federated_dataset(source, num_partitions, alpha, seed)
    sizes = {}
    for pid in range(num_partitions):
        partition = fds.load_partition(pid, "train").select_columns(["label"])
        if 0 < max_examples < len(partition):
            partition = partition.shuffle(seed=seed).select(range(max_examples))
        sizes[pid] = len(partition.train_test_split(test_size=test_fraction, seed=seed)["train"])
    return sizes


@lru_cache(maxsize=2)
def load_test_set(source: DataSource) -> tuple[torch.Tensor, torch.Tensor]:
    """The centralized test split (10,000 images) the server evaluates on."""
    fds = source.federated({})
    return _to_tensors(fds.load_split("test"))


def partition_label_counts(source: DataSource, num_partitions: int, alpha: float, seed: int) -> np.ndarray:
    """(num_partitions, 10) label histogram of the Dirichlet split, for reports and tests."""
    fds = _federated_dataset(source, num_partitions, alpha, seed)
    counts = np.zeros((num_partitions, 10), dtype=np.int64)
    for pid in range(num_partitions):
        labels = np.asarray(fds.load_partition(pid, "train")["label"])
        counts[pid] = np.bincount(labels, minlength=10)
    return counts


@dataclass
class TrainResult:
    """What one call of `train` did."""

    epoch_losses: list[float]
    num_steps: int
    train_time_s: float


def train(
    net: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.0,
    proximal_mu: float = 0.0,
    control_correction: list[torch.Tensor] | None = None,
    seed: int = 0,
) -> TrainResult:
    """Local SGD on one client's data.

    `proximal_mu` > 0 adds FedProx's (mu/2)·||w − w_global||², with w_global the weights
    at entry. `control_correction` (SCAFFOLD, one tensor per parameter: c − c_i) is added
    to every gradient before the step.
    """
    x, y = data
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    global_params = [p.detach().clone() for p in net.parameters()] if proximal_mu > 0 else None
    net.train()
    epoch_losses, steps, start = [], 0, time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total, count = 0.0, 0
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(x[idx]), y[idx])
            objective = loss
            if global_params is not None:
                prox = sum((p - g).pow(2).sum() for p, g in zip(net.parameters(), global_params))
                objective = loss + 0.5 * proximal_mu * prox
            objective.backward()
            if control_correction is not None:
                for p, corr in zip(net.parameters(), control_correction):
                    p.grad.add_(corr)
            optimizer.step()
            total += loss.item() * len(idx)
            count += len(idx)
            steps += 1
        epoch_losses.append(total / max(count, 1))
    return TrainResult(epoch_losses, steps, time.perf_counter() - start)


@torch.no_grad()
def evaluate(net: nn.Module, data: tuple[torch.Tensor, torch.Tensor], batch_size: int = 1000) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) of `net` on `data`."""
    x, y = data
    net.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        logits = net(x[i : i + batch_size])
        loss_sum += F.cross_entropy(logits, y[i : i + batch_size], reduction="sum").item()
        correct += (logits.argmax(1) == y[i : i + batch_size]).sum().item()
    n = max(len(x), 1)
    return loss_sum / n, correct / n
