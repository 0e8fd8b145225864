"""The run recorder: what it evaluates, checkpoints and saves as the run's model."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fedrl_app.config import RunConfig
from fedrl_app.server.recorder import BEST_MODEL, LAST_CHECKPOINT, METRICS_FILE, RunRecorder, read_jsonl
from tests.helpers import arrays


class _Strategy:
    """The recorder's view of a strategy; with `deploys`, one whose run model is not the one it sends."""

    def __init__(self, deploys: bool) -> None:
        self.rounds: dict = {}
        if deploys:
            self.deployed_arrays = lambda sent: arrays(w=sent["w"].numpy() * 10)

    def state_dict(self) -> dict:
        return {}


@pytest.mark.parametrize("deploys", [False, True])
def test_the_deployed_model_is_evaluated_and_saved_and_the_sent_one_is_resumed_from(tmp_path, deploys):
    cfg = RunConfig.from_run_config({"task": "cartpole", "wandb-mode": "disabled"})
    grid = SimpleNamespace(uplink_bytes=0, downlink_bytes=0)
    recorder = RunRecorder(cfg, tmp_path, _Strategy(deploys), grid,
                           lambda a, r: {"return": float(a["w"].numpy()[0])})
    sent = arrays(w=np.array([2.0, 3.0]))
    metrics = dict(recorder.evaluate_fn(1, sent).items())
    if deploys:
        assert metrics == {"return": 20.0, "sent-return": 2.0}
    else:
        assert metrics == {"return": 2.0}
    assert read_jsonl(tmp_path / METRICS_FILE)[0]["return"] == metrics["return"]
    best = torch.load(tmp_path / BEST_MODEL)
    np.testing.assert_allclose(best["w"].numpy(), [20.0, 30.0] if deploys else [2.0, 3.0])
    last = torch.load(tmp_path / LAST_CHECKPOINT, weights_only=False)
    np.testing.assert_allclose(last["arrays"]["w"].numpy(), [2.0, 3.0])  # a resumed run continues from these
    assert ("deployed-arrays" in last) == deploys
