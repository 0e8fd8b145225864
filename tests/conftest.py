"""Shared fixtures: a task identity for Flower messages, and a private simulation SuperLink for end-to-end tests.

End-to-end tests carry the `e2e` mark (`pytest -m "not e2e"` is the fast tier). A module sets
`NUM_SUPERNODES` to size the `sim` fixture's federation (default 3).
"""

import pytest
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import settings

from fedrl_app.runtime.launch import LocalSimulation, _pids_mentioning


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    yield


@pytest.fixture(scope="module")
def sim(request):
    """One `flower-superlink --simulation` per test module; every process it started is gone afterwards."""
    simulation = LocalSimulation(num_supernodes=getattr(request.module, "NUM_SUPERNODES", 3))
    with simulation:
        yield simulation
    assert simulation.process.poll() is not None, "SuperLink still running"
    assert _pids_mentioning(f"127.0.0.1:{simulation.port}") == [], "processes of the run still alive"


# Property-based tests of the untrusted decoders: a few hundred cases by default, 10,000 with
# `--hypothesis-profile=fuzz`.
settings.register_profile("default", max_examples=300)
settings.register_profile("fuzz", max_examples=10_000)
settings.load_profile("default")
