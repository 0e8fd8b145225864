"""The virtual clock: how long a client's round takes on its profile, from the bytes it really moved.

A client's round time = download (the bytes the server sent it) + compute (the samples it trained
on) + upload (the bytes of the reply it sent), each message paying its latency. The server computes
it from the profile of the reply's partition and the measured payload sizes; no run ever sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedrl_app.systems.profiles import ClientProfile


@dataclass(frozen=True)
class ClientTime:
    """Seconds one client spent on one round, split by phase."""

    download_s: float
    compute_s: float
    upload_s: float

    @property
    def total_s(self) -> float:
        """Download + compute + upload."""
        return self.download_s + self.compute_s + self.upload_s

    def as_list(self) -> list[float]:
        """[download, compute, upload], rounded to the millisecond (for metrics.jsonl)."""
        return [round(self.download_s, 3), round(self.compute_s, 3), round(self.upload_s, 3)]


def client_time(profile: ClientProfile, download_bytes: int, samples: int, upload_bytes: int) -> ClientTime:
    """The round time of a client that received `download_bytes`, trained on `samples` and sent `upload_bytes`."""
    return ClientTime(profile.download_s(download_bytes), profile.compute_s(samples), profile.upload_s(upload_bytes))


def synchronous_round_s(kept: list[float], late_or_failed: int, deadline_s: float) -> float:
    """A synchronous round lasts as long as its slowest kept client; with a deadline, a late or failed client
    keeps the server waiting until the deadline (it cannot know the reply will not come)."""
    longest = max(kept, default=0.0)
    if deadline_s > 0 and late_or_failed:
        return max(longest, deadline_s)
    return longest


def samples_within_deadline(profile: ClientProfile, download_bytes: int, upload_bytes: int, epochs: int,
                            deadline_s: float, available: int, minimum: int = 1) -> int:
    """Partial work (`local-work = "deadline"`, FedScale's deadline-aware training): how many of its `available`
    examples a client can train on for `epochs` epochs and still reply by the deadline, given the bytes it
    will download and upload; at least `minimum` (the client then trains that much, and may be late)."""
    budget_s = deadline_s - profile.download_s(download_bytes) - profile.upload_s(upload_bytes)
    per_sample_s = profile.compute_s(1) * max(epochs, 1)
    fits = int(budget_s / per_sample_s) if per_sample_s > 0 and budget_s > 0 else 0
    return max(min(fits, available), min(minimum, available))
