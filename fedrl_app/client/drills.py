"""Fault and adversary drills: clients that raise, hang, attack the model or send malformed replies (config-selected)."""

from __future__ import annotations

import os
import pickle
import time

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedrl_app.config import RunConfig
from fedrl_app.protocol import keys

MALFORMED_ATTACKS = ("nan", "wrong-shape", "pickle-exploit", "metadata-bomb")
INFLATED_EXAMPLES = 10**12  # what a weight-inflating client claims to have trained on


def inject_fault(cfg: RunConfig, pid: int, server_round: int) -> None:
    """Fault injection for tests and drills: this partition raises, or answers late, in that round."""
    if not cfg.fault_mode or pid != cfg.fault_partition or cfg.fault_round not in (0, server_round):
        return
    if cfg.fault_mode == "raise":
        raise RuntimeError(f"injected fault: partition {pid} raises in round {server_round}")
    time.sleep(cfg.fault_hang_s)  # "hang": the reply comes after the server's round timeout


def is_byzantine(cfg: RunConfig, pid: int, num_partitions: int) -> bool:
    """The first round(byzantine-fraction × N) partitions attack (seeded by construction, easy to audit)."""
    return pid < round(cfg.byzantine_fraction * num_partitions)


class _ExploitPayload:
    """Pickles to a call of os.system: what a hostile client would put in its metadata (drills only)."""

    def __reduce__(self):
        return (os.system, ("echo 'fedrl: a metadata payload ran code on the server'",))


def malformed_reply(content: RecordDict, attack: str) -> None:
    """Spoil a finished reply in place, as a hostile client would: the server must refuse it and go on.

    "nan": a NaN in the first array; "wrong-shape": the first array one entry short;
    "pickle-exploit": metadata that names os.system (refused by the allowlist, never run);
    "metadata-bomb": a 2 KB metadata pickle whose controller state, shared reference upon shared
    reference, renders to 12¹² numbers (refused in O(payload)).
    """
    if attack == "pickle-exploit":
        content[keys.METADATA] = ConfigRecord({keys.METADATA_PAYLOAD: pickle.dumps(_ExploitPayload())})
        return
    if attack == "metadata-bomb":
        bomb: list = [1.0]
        for _ in range(12):
            bomb = [bomb] * 12
        meta = pickle.loads(content[keys.METADATA][keys.METADATA_PAYLOAD])  # our own, honest metadata
        meta.controller_state = bomb
        content[keys.METADATA] = ConfigRecord({keys.METADATA_PAYLOAD: pickle.dumps(meta)})
        return
    name, record = next(iter(content.array_records.items()))  # the model, or drl-compress's delta record
    arrays = {k: v.numpy().copy() for k, v in record.items()}
    if attack == "nan":
        key = next((k for k, v in arrays.items() if v.dtype.kind == "f" and v.size), None)
        if key is None:
            raise ValueError("attack 'nan' needs a float array in the reply")
        arrays[key].flat[0] = np.nan
    else:
        first = next(iter(arrays))
        arrays[first] = arrays[first].ravel()[:-1]
    content[name] = ArrayRecord({k: Array(v) for k, v in arrays.items()})


def byzantine_update(global_params: list[torch.Tensor], net: torch.nn.Module, attack: str, scale: float,
                     rng: torch.Generator | None = None) -> None:
    """Replace the honest update Δ by −Δ (sign-flip), scale·Δ (scale; sparse-scale, the same for a
    drl-compress client, whose scaled update then travels compressed) or, per tensor, Gaussian noise
    of `scale` × the honest update's RMS (noise, FedPG-BR's random-noise agent), in place."""
    if attack not in ("sign-flip", "scale", "sparse-scale", "noise"):
        return  # the others spoil the reply (malformed_reply), its claimed weight, or the agent's behaviour
    factor = -1.0 if attack == "sign-flip" else scale
    with torch.no_grad():
        for g, p in zip(global_params, net.parameters()):
            if attack == "noise":
                rms = float((p - g).pow(2).mean().sqrt())
                p.copy_(g + scale * rms * torch.randn(p.shape, generator=rng))
            else:
                p.copy_(g + factor * (p - g))


def poison_experience(batch: tuple, attack: str, rng: np.random.Generator) -> tuple:
    """A faulty agent's shared transitions: every reward negated (poison-rewards), or states drawn
    uniformly from [−10, 10] in every dimension, far outside LunarLander's and CartPole's usual range
    (poison-states)."""
    obs, actions, rewards, next_obs, dones = batch
    if attack == "poison-rewards":
        return obs, actions, -rewards, next_obs, dones
    if attack == "poison-states":
        return (rng.uniform(-10, 10, size=obs.shape).astype(np.float32), actions, rewards,
                rng.uniform(-10, 10, size=next_obs.shape).astype(np.float32), dones)
    raise ValueError(f"unknown experience attack {attack!r}")
