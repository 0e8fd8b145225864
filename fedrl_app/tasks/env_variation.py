"""Per-client environment dynamics (config `env-variation`): LunarLander's gravity and wind, CartPole's gravity and pole.

A spec is `none`, a named profile, or explicit per-partition values:

    env-variation = "varied"
    env-variation = "gravity=-10,-6,-3; wind-power=0,10,5"

Partition i takes entry i mod L of each list (L: the list's length), so a spec means the same
thing at any number of clients, and the server can evaluate the global policy on each distinct
variant without knowing N. Parameters not named keep the environment's nominal value.

LunarLander-v3 (`gymnasium.envs.box2d.lunar_lander`): `gravity` in (−12, 0) (Earth −10 is
nominal, the Moon −1.6), `wind-power` in [0, 20] and `turbulence-power` in [0, 2]; wind is
switched on for a partition when either of them is above 0. CartPole-v1: `gravity` (> 0,
nominal 9.8), `masspole` (> 0, nominal 0.1 kg) and `length` (> 0, half the pole, nominal 0.5 m).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import gymnasium as gym

ENV_IDS = {"cartpole": "CartPole-v1", "lunarlander": "LunarLander-v3"}

# name -> (lower, upper, interval brackets, nominal value)
PARAMETERS: dict[str, dict[str, tuple[float, float, str, float]]] = {
    "lunarlander": {"gravity": (-12.0, 0.0, "()", -10.0), "wind-power": (0.0, 20.0, "[]", 0.0),
                    "turbulence-power": (0.0, 2.0, "[]", 0.0)},
    "cartpole": {"gravity": (0.0, 100.0, "(]", 9.8), "masspole": (0.0, 10.0, "(]", 0.1),
                 "length": (0.0, 10.0, "(]", 0.5)},
}

# Named profiles: five variants each, partition i gets variant i mod 5. `gravity`: Earth to twice
# the Moon's; `wind`: calm to gymnasium's strongest documented wind; `varied`: both at once, shifted
# so that no two variants share a gravity or a wind. The extremes stay solvable by the nominal
# reward (the pad is the same; only the dynamics change).
PROFILES: dict[str, dict[str, dict[str, list[float]]]] = {
    "gravity": {"lunarlander": {"gravity": [-10.0, -8.0, -6.0, -4.5, -3.2]},
                "cartpole": {"gravity": [9.8, 7.0, 12.0, 5.0, 15.0]}},
    "wind": {"lunarlander": {"wind-power": [0.0, 5.0, 10.0, 15.0, 20.0],
                             "turbulence-power": [0.0, 0.5, 1.0, 1.5, 2.0]},
             "cartpole": {"masspole": [0.1, 0.2, 0.05, 0.3, 0.15]}},
    "varied": {"lunarlander": {"gravity": [-10.0, -8.0, -6.0, -4.5, -3.2],
                               "wind-power": [0.0, 10.0, 0.0, 15.0, 5.0],
                               "turbulence-power": [0.0, 1.0, 0.0, 1.5, 0.5]},
               "cartpole": {"gravity": [9.8, 7.0, 12.0, 5.0, 15.0], "masspole": [0.1, 0.2, 0.05, 0.3, 0.15],
                            "length": [0.5, 0.75, 0.4, 1.0, 0.6]}},
}


class EnvVariationError(ValueError):
    """A bad `env-variation` spec; the message names the parameter and the value."""


def parse_variation(task: str, spec: str) -> dict[str, list[float]]:
    """The spec's per-parameter value lists (empty for `none`); raises EnvVariationError naming what is wrong."""
    if task not in PARAMETERS:
        raise EnvVariationError(f"env-variation applies to the RL tasks {sorted(PARAMETERS)}, not {task!r}")
    spec = spec.strip()
    if spec in ("", "none"):
        return {}
    if spec in PROFILES:
        return {k: list(v) for k, v in PROFILES[spec][task].items()}
    allowed = PARAMETERS[task]
    values: dict[str, list[float]] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        name, eq, listed = part.partition("=")
        name = name.strip()
        if not eq:
            raise EnvVariationError(f"env-variation: {part[:80]!r} is neither a profile {['none', *PROFILES]} "
                                    "nor `name=v0,v1,...`")
        if name not in allowed:
            raise EnvVariationError(f"env-variation: {task} has no parameter {name[:40]!r}; allowed: {sorted(allowed)}")
        if name in values:
            raise EnvVariationError(f"env-variation: {name!r} is given twice")
        try:
            numbers = [float(v) for v in listed.split(",")]
        except ValueError:
            raise EnvVariationError(f"env-variation: {name} = {listed[:80]!r} is not a comma-separated list of numbers"
                                    ) from None
        low, high, brackets, _ = allowed[name]
        for v in numbers:
            above = low <= v if brackets[0] == "[" else low < v
            below = v <= high if brackets[1] == "]" else v < high
            if not (above and below):  # NaN fails both
                raise EnvVariationError(f"env-variation: {name} = {v:g} is outside {brackets[0]}{low:g}, {high:g}"
                                        f"{brackets[1]} for {task}")
        values[name] = numbers
    return values


def num_variants(task: str, spec: str) -> int:
    """How many distinct environments the spec makes (1 for `none`): the lists' common period."""
    return math.lcm(*(len(v) for v in parse_variation(task, spec).values()))


def env_params(task: str, spec: str, index: int) -> dict[str, float]:
    """The parameters of partition (or variant) `index`: each list's entry index mod its length, nominal otherwise."""
    chosen = {name: nominal for name, (_, _, _, nominal) in PARAMETERS[task].items()}
    for name, values in parse_variation(task, spec).items():
        chosen[name] = values[index % len(values)]
    return chosen


def make_env(task: str, params: Mapping[str, float] | None = None) -> gym.Env:
    """The task's environment with these dynamics (nominal where `params` is None or silent)."""
    params = dict(params or {})
    if task == "lunarlander":
        kwargs: dict = {"gravity": float(params.get("gravity", -10.0))}
        wind, turbulence = float(params.get("wind-power", 0.0)), float(params.get("turbulence-power", 0.0))
        if wind > 0 or turbulence > 0:
            kwargs.update(enable_wind=True, wind_power=wind, turbulence_power=turbulence)
        return gym.make(ENV_IDS[task], **kwargs)
    env = gym.make(ENV_IDS[task])
    if task == "cartpole" and params:
        pole = env.unwrapped
        pole.gravity = float(params.get("gravity", pole.gravity))
        pole.masspole = float(params.get("masspole", pole.masspole))
        pole.length = float(params.get("length", pole.length))
        pole.total_mass = pole.masspole + pole.masscart  # derived in CartPoleEnv.__init__: keep them consistent
        pole.polemass_length = pole.masspole * pole.length
    return env
