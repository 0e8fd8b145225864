"""The RL heterogeneity benchmark's report: runs from other folders join the table once, never twice."""

import shutil
from pathlib import Path

import pytest

from benchmarks.rl_heterogeneity import report

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
CLEAN = RESULTS / "rl_fusion_mix0" / "fusion-none-n3-seed1.json"
VARIED = RESULTS / "rl_fusion_mix0" / "fusion-varied-n3-seed1.json"


def test_report_includes_runs_from_another_folder_and_refuses_a_run_twice(tmp_path):
    shutil.copy(VARIED, tmp_path / VARIED.name)
    table = report("cmd", tmp_path, [CLEAN])
    rows = [line for line in table.splitlines() if line.startswith("| 3 |")]
    assert [row.split(" | ")[1:3] for row in rows] == [["none", "fusion"], ["varied", "fusion"]]
    assert (tmp_path / "returns-none-n3.png").is_file() and (tmp_path / "table.md").read_text() == table
    with pytest.raises(SystemExit, match="fusion-varied-n3-seed1.json is the same run"):
        report("cmd", tmp_path, [VARIED])
