"""The offline trust replay: the slow-to-regain reputation's weights, and β = 1 reproducing Fusion's own."""

import json
from pathlib import Path

import numpy as np

from benchmarks.trust_replay import RUNS, reputation_weights, similarities


def test_the_reputation_falls_at_once_and_regains_a_beta_share_of_the_gap():
    sims = np.array([[0.8, 0.4], [-0.2, 0.4], [0.8, 0.4], [0.8, -0.1]])
    w = reputation_weights(sims, beta=0.5)
    # client 0: 0.8, then −0.2 at once, then halfway back to 0.8: 0.3, then 0.55; client 1 holds 0.4, then −0.1
    np.testing.assert_allclose(w, [[2 / 3, 1 / 3], [0.0, 1.0], [3 / 7, 4 / 7], [1.0, 0.0]])
    np.testing.assert_allclose(reputation_weights(np.array([[-0.1, -0.3]]), beta=1.0), [[0.5, 0.5]])  # the fallback


def test_beta_one_replays_the_weights_fusion_recorded():
    run = json.loads(Path(RUNS / "fusion-reward-flip-n5-seed1.json").read_text())
    recorded = np.array([[dict(zip(m["trust-partitions"], m["trust-weights"]))[p] for p in range(5)]
                         for m in run["metrics"] if "trust-similarities" in m])
    np.testing.assert_allclose(reputation_weights(similarities(run), beta=1.0), recorded, atol=1e-9)
