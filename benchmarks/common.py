"""Shared helpers for benchmark scripts: run the app through Flower, summarise metrics.jsonl."""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from fedrl_app.runtime.launch import LocalSimulation
from fedrl_app.runtime.paths import project_root
from fedrl_app.server.recorder import CLIENTS_FILE, METRICS_FILE, read_jsonl

ROOT = project_root() or Path(__file__).resolve().parent.parent


def benchmark_parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser described by the module's first doc line, with the shared `--command` option."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--command", help="command line(s) to print above the table (default: the one that ran); "
                                           "use it with --report-only to name the sweeps the results came from")
    return parser


def command_line(module: str, override: str | None = None) -> str:
    """The command printed above a benchmark table: `override`, or this process's own command line."""
    return override or shlex.join(["python", "-m", module, *sys.argv[1:]])


def toml_value(value) -> str:
    """A Python value as a TOML literal for --run-config."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def run_config_args(config: dict) -> list[str]:
    """A dict of run-config values as `flwr run --run-config` arguments."""
    return [" ".join(f"{k}={toml_value(v)}" for k, v in config.items())]


def run_app(run_config: dict, num_supernodes: int, scratch: Path, log_path: Path) -> tuple[list[dict], list[dict]]:
    """One full `flwr run` on a private SuperLink; returns the run's metrics and client rows."""
    out_root = scratch / "outputs"
    if out_root.exists():
        shutil.rmtree(out_root)
    overrides = run_config_args({**run_config, "outputs-dir": str(out_root)})
    with LocalSimulation(num_supernodes=num_supernodes) as sim:
        result = sim.run(ROOT, overrides, capture=True)
    log_path.write_text(result.stdout + result.stderr)
    runs = sorted(out_root.glob(f"*/{METRICS_FILE}"))
    if result.returncode != 0 or not runs:
        raise RuntimeError(f"run {overrides!r} failed (rc={result.returncode}); see {log_path}")
    return read_jsonl(runs[-1]), read_jsonl(runs[-1].parent / CLIENTS_FILE)


def run_and_save(run_config: dict, num_supernodes: int, out: Path, name: str) -> tuple[list[dict], list[dict]]:
    """`run_app` in a scratch directory, its rows saved as out/<name>.jsonl and out/<name>.clients.jsonl."""
    with tempfile.TemporaryDirectory() as scratch:
        rows, clients = run_app(run_config, num_supernodes, Path(scratch), out / f"{name}.log")
    write_jsonl(out / f"{name}.jsonl", rows)
    write_jsonl(out / f"{name}.clients.jsonl", clients)
    return rows, clients


def run_config_overrides(pairs: list[str]) -> dict:
    """`--set KEY=VALUE ...` as run-config overrides: numbers, booleans and lists parsed as JSON, the rest strings."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE, got {pair!r}")
        out[key] = json.loads(value) if value[:1] in "-0123456789tf[" else value
    return out


def first_round_reaching(rows: list[dict], key: str, target: float) -> dict | None:
    """The first metrics row whose `key` is >= target, or None."""
    return next((r for r in rows if r.get(key) is not None and r[key] >= target), None)


def fmt(values: list, spec: str = ".3f", none: str = "not reached") -> str:
    """mean ± std over seeds (the value alone for one seed); says how many runs never got there."""
    got = [v for v in values if v is not None]
    if not got:
        return none
    text = f"{statistics.mean(got):{spec}}" + (f" ± {statistics.stdev(got):{spec}}" if len(got) > 1 else "")
    return text + (f" ({len(values) - len(got)} of {len(values)} not reached)" if len(got) < len(values) else "")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Rows as JSON lines (what the report step reads back)."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def save_figure(fig, path: Path) -> None:
    """tight_layout, save as PNG (110 dpi, like every benchmark plot), close."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_table(lines: list[str], out: Path) -> str:
    """Write the Markdown table lines to out/table.md and return the text."""
    table = "\n".join(lines) + "\n"
    (out / "table.md").write_text(table)
    return table
