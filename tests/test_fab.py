"""The FAB Flower builds from this project holds the app's code and stays far below Flower's 10 MB limit."""

import io
import zipfile

from flwr.cli.build import build_fab_from_disk

from benchmarks.common import ROOT


def test_fab_holds_the_app_code_only():
    fab = build_fab_from_disk(ROOT)
    names = zipfile.ZipFile(io.BytesIO(fab)).namelist()
    assert {"fedrl_app/server_app.py", "fedrl_app/client_app.py", "strategies/fedavg.py", "pyproject.toml"} <= set(names)
    # benchmark results (JSON/JSONL, which Flower packs by default) once pushed it past 10 MB
    assert not any(n.startswith(("benchmarks/", "tests/", "outputs/")) for n in names), names
    assert len(fab) < 1_000_000
