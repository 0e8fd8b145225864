"""Per-partition system profiles: uplink and downlink bandwidth, compute speed, availability, latency.

`systems-profile` names where they come from:

- ``uniform``: every client gets the median mobile client below, always available (the
  heterogeneity of ``mobile`` switched off, everything else equal, so the two compare cleanly).
- ``mobile``, drawn per partition from a seeded RNG (a partition's profile does not depend on how
  many partitions there are):

  - uplink kbps ~ 6000 · LogNormal(0, 1.1): median ≈ 6 Mbps and about a quarter of clients under
    3 Mbps, the shape of the mobile bandwidth trace FedScale ships (Lai et al., ICML 2022);
  - downlink = 5 × uplink: cellular downlink medians run about five times the uplink (Ookla
    Speedtest Global Index, mobile, 2023–24: ~50 down / ~10 Mbps up); FedScale's trace has one number;
  - training time per sample = 3 × 5 ms × LogNormal(1, 0.6): FedScale's per-sample compute
    latency, ×3 for the backward pass (forward + backward ≈ 3 forwards);
  - availability (probability of completing a round it was asked to) ~ U(0.7, 1.0), mean 0.85: FLASH
    (Yang et al., WWW 2021, a 136k-phone trace) sees more than 10% of client-rounds fail;
  - latency: 50 ms per message (one way), a typical cellular round-trip of ~100 ms.

- ``file:PATH``: a CSV with one row per partition and columns `partition_id`, `uplink_kbps`,
  `downlink_kbps`, `ms_per_sample`, `availability` (and optionally `latency_ms`), so a real trace
  can be plugged in. A bad file is refused naming the row and column.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

PROFILES = ("uniform", "mobile")
FILE_PREFIX = "file:"
MEDIAN_UPLINK_KBPS = 6000.0
UPLINK_SIGMA = 1.1
DOWNLINK_RATIO = 5.0
FORWARD_MS_SCALE = 5.0            # FedScale: per-sample compute ~ 5 ms · LogNormal(1, 0.6)
COMPUTE_MU, COMPUTE_SIGMA = 1.0, 0.6
BACKWARD_FACTOR = 3.0
AVAILABILITY_RANGE = (0.7, 1.0)
LATENCY_MS = 50.0
CSV_COLUMNS = ("partition_id", "uplink_kbps", "downlink_kbps", "ms_per_sample", "availability")


class ProfileError(ValueError):
    """A systems profile cannot be built (unknown name, or a trace file with a bad row)."""


@dataclass(frozen=True)
class ClientProfile:
    """One client's system: links in kbit/s, training milliseconds per sample, P(available), one-way latency."""

    uplink_kbps: float
    downlink_kbps: float
    ms_per_sample: float
    availability: float
    latency_ms: float = LATENCY_MS

    def upload_s(self, nbytes: int) -> float:
        """Seconds to send `nbytes` up, latency included."""
        return self.latency_ms / 1e3 + 8.0 * nbytes / (self.uplink_kbps * 1e3)

    def download_s(self, nbytes: int) -> float:
        """Seconds to receive `nbytes`, latency included."""
        return self.latency_ms / 1e3 + 8.0 * nbytes / (self.downlink_kbps * 1e3)

    def compute_s(self, samples: int) -> float:
        """Seconds of local training over `samples` samples (forward and backward)."""
        return self.ms_per_sample * samples / 1e3


def median_mobile_profile() -> ClientProfile:
    """The median client of ``mobile``, always available: every client of ``uniform``."""
    return ClientProfile(MEDIAN_UPLINK_KBPS, DOWNLINK_RATIO * MEDIAN_UPLINK_KBPS,
                         BACKWARD_FACTOR * FORWARD_MS_SCALE * math.exp(COMPUTE_MU), 1.0)


def mobile_profile(partition_id: int, seed: int) -> ClientProfile:
    """A ``mobile`` client, drawn from (seed, partition_id) alone."""
    rng = np.random.default_rng([seed, partition_id, 0x5E75])
    uplink = MEDIAN_UPLINK_KBPS * float(rng.lognormal(0.0, UPLINK_SIGMA))
    ms = BACKWARD_FACTOR * FORWARD_MS_SCALE * float(rng.lognormal(COMPUTE_MU, COMPUTE_SIGMA))
    availability = float(rng.uniform(*AVAILABILITY_RANGE))
    return ClientProfile(uplink, DOWNLINK_RATIO * uplink, ms, availability)


def check_profile_name(spec: str) -> None:
    """Raise ProfileError unless `spec` is a known profile or ``file:PATH``."""
    if spec in PROFILES or (spec.startswith(FILE_PREFIX) and len(spec) > len(FILE_PREFIX)):
        return
    raise ProfileError(f"config key 'systems-profile' is {spec!r}; allowed values: {list(PROFILES)} or 'file:PATH'")


def load_trace(path: Path) -> dict[int, ClientProfile]:
    """partition id -> profile from a CSV trace; ProfileError naming the row and column of the first bad value."""
    if not path.is_file():
        raise ProfileError(f"config key 'systems-profile': no trace file at {str(path)!r}")
    profiles: dict[int, ClientProfile] = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ProfileError(f"trace {path}: missing column(s) {missing}; expected {list(CSV_COLUMNS)} "
                               "(and optionally latency_ms)")
        for row_no, row in enumerate(reader, start=2):  # row 1 is the header
            values = {}
            for column in (*CSV_COLUMNS, "latency_ms"):
                raw = row.get(column)
                if column == "latency_ms" and raw in (None, ""):
                    values[column] = LATENCY_MS
                    continue
                try:
                    values[column] = float(raw)
                except (TypeError, ValueError):
                    raise ProfileError(f"trace {path}, row {row_no}, column {column!r}: {raw!r} is not a number") from None
                if not math.isfinite(values[column]):
                    raise ProfileError(f"trace {path}, row {row_no}, column {column!r}: {raw!r} is not finite")
            pid = values["partition_id"]
            checks = {
                "partition_id": pid >= 0 and pid.is_integer(),
                "uplink_kbps": values["uplink_kbps"] > 0, "downlink_kbps": values["downlink_kbps"] > 0,
                "ms_per_sample": values["ms_per_sample"] >= 0, "availability": 0 < values["availability"] <= 1,
                "latency_ms": values["latency_ms"] >= 0,
            }
            for column, ok in checks.items():
                if not ok:
                    raise ProfileError(f"trace {path}, row {row_no}, column {column!r}: {row.get(column)!r} is out of "
                                       "range (ids are integers ≥ 0, bandwidths > 0, ms ≥ 0, availability in (0, 1])")
            if int(pid) in profiles:
                raise ProfileError(f"trace {path}, row {row_no}, column 'partition_id': partition {int(pid)} repeats")
            profiles[int(pid)] = ClientProfile(values["uplink_kbps"], values["downlink_kbps"], values["ms_per_sample"],
                                               values["availability"], values["latency_ms"])
    return profiles


class SystemsModel:
    """Profiles by partition id for one run: `profile(pid)`, and whether a client is up in a round."""

    def __init__(self, spec: str, seed: int) -> None:
        check_profile_name(spec)
        self.spec, self.seed = spec, seed
        self._trace = load_trace(Path(spec[len(FILE_PREFIX):]).expanduser()) if spec.startswith(FILE_PREFIX) else None

    @property
    def heterogeneous(self) -> bool:
        """False for ``uniform``."""
        return self.spec != "uniform"

    def profile(self, partition_id: int) -> ClientProfile:
        """The profile of a partition (ProfileError if a trace has no row for it)."""
        if self._trace is not None:
            if partition_id not in self._trace:
                raise ProfileError(f"trace {self.spec[len(FILE_PREFIX):]} has no row for partition {partition_id} "
                                   f"(it has {sorted(self._trace)})")
            return self._trace[partition_id]
        if self.spec == "uniform":
            return median_mobile_profile()
        return mobile_profile(partition_id, self.seed)

    def available(self, partition_id: int, server_round: int, attempt: int = 0) -> bool:
        """Whether the partition completes the round it was asked to (seeded by seed, round, partition, attempt)."""
        p = self.profile(partition_id).availability
        if p >= 1.0:
            return True
        return bool(np.random.default_rng([self.seed, server_round, partition_id, attempt, 0xA7A1]).random() < p)


@lru_cache(maxsize=8)
def systems_model(spec: str, seed: int) -> SystemsModel:
    """The run's SystemsModel, built once per process: a client asks for it with every message, and a trace
    file would otherwise be read again each time."""
    return SystemsModel(spec, seed)
