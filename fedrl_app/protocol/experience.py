"""Shared experience: a client's transitions packed, gzip-compressed, and checked again on the server.

A batch of N transitions travels as one float32 matrix with rows
[obs (d), action, reward, next_obs (d), terminated], gzip-compressed into a
ConfigRecord bytes value. The server decompresses with a hard cap (no gzip bomb),
then checks shape, finiteness, action range and done flags before using any of it.
"""

from __future__ import annotations

import gzip
import zlib

import numpy as np
from flwr.app import ConfigRecord

from fedrl_app.protocol.payload import MAX_ABS
from fedrl_app.protocol.untrusted import brief


class ExperienceError(ValueError):
    """A shared-experience payload was refused."""


def pack_experience(obs, actions, rewards, next_obs, dones, level: int = 6) -> tuple[ConfigRecord, int]:
    """(ConfigRecord with the gzip payload and row count, uncompressed size in bytes)."""
    matrix = np.column_stack([np.asarray(obs, np.float32), np.asarray(actions, np.float32),
                              np.asarray(rewards, np.float32), np.asarray(next_obs, np.float32),
                              np.asarray(dones, np.float32)]).astype(np.float32)
    raw = matrix.tobytes()
    return ConfigRecord({"gz": gzip.compress(raw, compresslevel=level), "rows": int(len(matrix))}), len(raw)


def unpack_experience(record: ConfigRecord, obs_dim: int, n_actions: int, max_rows: int = 10_000
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Decode and validate an untrusted experience record: (obs, actions, rewards, next_obs, dones)."""
    rows, payload = record.get("rows"), record.get("gz")
    if not isinstance(rows, int) or isinstance(rows, bool) or not 0 <= rows <= max_rows:
        raise ExperienceError(f"'rows' must be an int in [0, {max_rows}], got {brief(rows)}")
    if not isinstance(payload, bytes):
        raise ExperienceError(f"'gz' must be bytes, got {brief(payload)}")
    cols = 2 * obs_dim + 3
    expected = rows * cols * 4
    try:
        inflater = zlib.decompressobj(wbits=31)  # gzip container
        raw = inflater.decompress(payload, expected + 1)  # never inflate more than we will accept
    except zlib.error as err:
        raise ExperienceError(f"payload is not valid gzip ({err})") from None
    if len(raw) != expected or inflater.unconsumed_tail:
        raise ExperienceError(f"payload inflates to more or less than {rows} rows × {cols} float32 "
                              f"({expected} bytes)")
    matrix = np.frombuffer(raw, dtype=np.float32).reshape(rows, cols)
    if not np.all(np.isfinite(matrix)):
        raise ExperienceError("payload contains NaN or Inf")
    if matrix.size and float(np.max(np.abs(matrix))) > MAX_ABS:
        raise ExperienceError(f"payload has |value| up to {float(np.max(np.abs(matrix))):.3g} > {MAX_ABS:g}")
    obs, actions = matrix[:, :obs_dim], matrix[:, obs_dim]
    rewards, next_obs, dones = matrix[:, obs_dim + 1], matrix[:, obs_dim + 2: 2 * obs_dim + 2], matrix[:, -1]
    if np.any((actions != np.round(actions)) | (actions < 0) | (actions >= n_actions)):
        raise ExperienceError(f"actions must be integers in [0, {n_actions})")
    if np.any((dones != 0) & (dones != 1)):
        raise ExperienceError("terminated flags must be 0 or 1")
    return obs.copy(), actions.astype(np.int64), rewards.copy(), next_obs.copy(), dones.copy()
