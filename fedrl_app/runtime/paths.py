"""Where the shipped data set and the run outputs live, wherever the app was started from.

A FAB carries only code, and Flower runs it from `$FLWR_HOME/apps/...`, so `__file__`
is not a reliable way to find the project. We look, in order, at: an explicit path,
the `FEDRL_DATA_DIR` / `FEDRL_PROJECT_DIR` environment variables, the source tree this
module sits in, and the installed `fedrl` distribution (editable or regular).
"""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

DISTRIBUTION = "fedrl"
MNIST_RELATIVE = Path("fedrl_app") / "data" / "mnist"
MNIST_FILES = ("train.parquet", "test.parquet")


def _candidate_roots() -> list[Path]:
    roots: list[Path] = []
    if env := os.environ.get("FEDRL_PROJECT_DIR"):
        roots.append(Path(env))
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        dist = None
    if dist is not None and (direct_url := dist.read_text("direct_url.json")):
        # `pip install -e .` records the source tree here; it beats __file__, which
        # points into $FLWR_HOME/apps/... when Flower runs the app from its FAB.
        url = json.loads(direct_url).get("url", "")
        if url.startswith("file://"):
            roots.append(Path(unquote(urlparse(url).path)))
    here = Path(__file__).resolve().parents[2]  # fedrl_app/runtime/paths.py -> the project
    if not _inside_flwr_apps(here):
        roots.append(here)
    if dist is not None:
        roots.append(Path(str(dist.locate_file(""))))  # regular install: site-packages
    return roots


def _inside_flwr_apps(path: Path) -> bool:
    """True for an unpacked FAB under $FLWR_HOME/apps (code only, no data, not the user's tree)."""
    flwr_home = Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr")).expanduser().resolve()
    return (flwr_home / "apps") in path.parents


def project_root() -> Path | None:
    """The source tree of the installed project (has a pyproject.toml), if there is one."""
    for root in _candidate_roots():
        if (root / "pyproject.toml").is_file() and (root / "fedrl_app").is_dir():
            return root
    return None


def find_mnist_dir(data_path: str = "") -> Path:
    """Directory holding MNIST `train.parquet` and `test.parquet`.

    Raises
    ------
    FileNotFoundError
        Naming every place that was searched.
    """
    if data_path:
        path = Path(data_path).expanduser()
        if all((path / f).is_file() for f in MNIST_FILES):
            return path
        raise FileNotFoundError(
            f"config key 'data-path' = {data_path!r} does not hold {list(MNIST_FILES)}"
        )
    searched = []
    candidates = [Path(os.environ["FEDRL_DATA_DIR"])] if os.environ.get("FEDRL_DATA_DIR") else []
    candidates += [root / MNIST_RELATIVE for root in _candidate_roots()]
    for path in candidates:
        searched.append(str(path))
        if all((path / f).is_file() for f in MNIST_FILES):
            return path
    raise FileNotFoundError(
        "MNIST parquet files not found; searched "
        + ", ".join(searched)
        + ". Install the project (pip install -e .), set FEDRL_DATA_DIR, or set the "
        "config key 'data-path' to a directory with train.parquet and test.parquet."
    )


def outputs_root(outputs_dir: str = "") -> Path:
    """Root for run artefacts: 'outputs-dir' if set, else <project>/outputs, else ./outputs."""
    if outputs_dir:
        return Path(outputs_dir).expanduser().resolve()
    root = project_root()
    return (root / "outputs") if root else Path.cwd() / "outputs"
