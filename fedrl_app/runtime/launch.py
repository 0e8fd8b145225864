"""`fedrl-run`: run the app on a private local SuperLink (simulation) and stop it afterwards.

`flwr run . --stream` starts a detached SuperLink that outlives the run. This launcher
starts its own `flower-superlink --simulation` on a free loopback port with a private
FLWR_HOME (your ~/.flwr is never touched), submits the run with `flwr run`, streams its
logs, and stops every process it started, by process group, when the run ends.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from fedrl_app.runtime.paths import project_root

CONNECTION = "fedrl-local"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSimulation:
    """A `flower-superlink --simulation` owned by this process, with its own FLWR_HOME.

    Use as a context manager; on exit the SuperLink's whole process group (SuperExec,
    ServerApp, simulation runtime) is terminated, then killed if it lingers.
    """

    def __init__(self, num_supernodes: int = 10, cpus_per_client: int = 1, flwr_home: Path | None = None,
                 startup_timeout: float = 60.0) -> None:
        self.num_supernodes, self.cpus_per_client = num_supernodes, cpus_per_client
        self._own_home = flwr_home is None
        self.flwr_home = Path(flwr_home or tempfile.mkdtemp(prefix="fedrl-flwr-home-"))
        self.port = free_port()
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None  # the SuperLink
        self.processes: list[subprocess.Popen] = []   # everything started, SuperLink first

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ, FLWR_HOME=str(self.flwr_home), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
        env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
        # Flower's SuperExec looks for new work every 1 s by default; on loopback 0.2 s costs nothing and
        # takes up to 0.8 s off every message's start (each message starts a ClientApp process in deployment)
        env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.2")
        return env

    def connection_toml(self) -> str:
        """The `[superlink.fedrl-local]` connection `flwr run` uses."""
        return (f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n'
                f"options.num-supernodes = {self.num_supernodes}\n"
                f"options.backend.client-resources.num-cpus = {self.cpus_per_client}\n")

    def superlink_args(self) -> list[str]:
        return ["--insecure", "--simulation", "--isolation", "subprocess", "--host", "127.0.0.1",
                "--port", str(self.port), "--disable-runtime-dependency-installation"]

    def open_health(self):
        """GET the SuperLink's /health endpoint (plain HTTP here; TLS in LocalDeployment)."""
        return urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1)

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        """Start a process in its own session (so its whole group can be stopped), logging to FLWR_HOME."""
        with open(self.flwr_home / f"{name}.log", "ab") as log_file:
            process = subprocess.Popen([shutil.which(argv[0]) or argv[0], *argv[1:]], env=self.env,
                                       stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    def __enter__(self) -> LocalSimulation:
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text(f'[superlink]\ndefault = "{CONNECTION}"\n\n'
                                                    + self.connection_toml())
        self.process = self.start("superlink", ["flower-superlink", *self.superlink_args()])
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.close()
                raise RuntimeError(f"flower-superlink exited with {self.process.returncode}; "
                                   f"see {self.flwr_home / 'superlink.log'}")
            try:
                with self.open_health():
                    return self
            except OSError:
                time.sleep(0.2)
        self.close()
        raise RuntimeError(f"flower-superlink did not answer on port {self.port} within {self.startup_timeout:.0f}s")

    def run(self, app_dir: Path, run_config: list[str] | None = None, *, capture: bool = False,
            timeout: float | None = None) -> subprocess.CompletedProcess:
        """`flwr run APP fedrl-local --stream`, blocking until the run ends."""
        cmd = [shutil.which("flwr") or "flwr", "run", str(app_dir), CONNECTION, "--stream"]
        for item in run_config or []:
            cmd += ["--run-config", item]
        result = subprocess.run(cmd, env=self.env, capture_output=capture, text=True, timeout=timeout)
        # `flwr run` exits 0 even when the ServerApp raised: ask the SuperLink how the run ended.
        status = self.last_run_status()
        if result.returncode == 0 and status != "finished:completed":
            result.returncode = 1
        if not capture:
            print(f"fedrl-run: run status {status}", file=sys.stderr)
        result.status = status  # type: ignore[attr-defined]
        return result

    def last_run_status(self) -> str:
        """Status of the newest run on this SuperLink (e.g. 'finished:completed')."""
        out = subprocess.run([shutil.which("flwr") or "flwr", "ls", CONNECTION, "--format", "json"],
                             env=self.env, capture_output=True, text=True, timeout=60)
        try:
            runs = json.loads(out.stdout)["runs"]
        except (ValueError, KeyError):
            return f"unknown ({out.stderr.strip()[-200:]})"
        return max(runs, key=lambda r: r["pending-at"])["status"] if runs else "no run"

    def close(self) -> None:
        """Stop every process started here and everything they spawned (by process group id)."""
        for process in reversed(self.processes):  # SuperNodes before the SuperLink
            stop_process_group(process)
        _kill_stragglers(f"127.0.0.1:{self.port}")
        if self._own_home:
            shutil.rmtree(self.flwr_home, ignore_errors=True)

    def __exit__(self, *exc) -> None:
        self.close()


def stop_process_group(process: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM the process's group (it leads one: start_new_session), SIGKILL what lingers."""
    pgid = process.pid
    if process.poll() is None:
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
    try:  # the group can outlive its leader: make sure nothing is left
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _pids_mentioning(needle: str) -> list[int]:
    """PIDs whose command line contains `needle` (Linux /proc)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if needle.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return [p for p in pids if p != os.getpid()]


def _kill_stragglers(address: str, grace_s: float = 10.0) -> None:
    """Processes that detached from the group but still talk to our SuperLink (flwr-simulation)."""
    deadline = time.monotonic() + grace_s
    while _pids_mentioning(address) and time.monotonic() < deadline:
        time.sleep(0.5)  # they watch their parent's pid and exit on their own
    for pid in _pids_mentioning(address):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def main(argv: list[str] | None = None) -> int:
    """Entry point of `fedrl-run`."""
    parser = argparse.ArgumentParser(prog="fedrl-run", description=__doc__.split("\n")[0])
    parser.add_argument("--run-config", "-c", action="append", default=[],
                        help="run-config overrides, as for `flwr run` (e.g. \"strategy='fedprox' num-server-rounds=20\")")
    parser.add_argument("--num-supernodes", type=int, default=10, help="simulated clients (default 10)")
    parser.add_argument("--cpus-per-client", type=int, default=1, help="CPUs Ray reserves per ClientApp (default 1)")
    parser.add_argument("--app", type=Path, default=None, help="app directory (default: this project)")
    args = parser.parse_args(argv)
    app_dir = args.app or (Path.cwd() if (Path.cwd() / "pyproject.toml").is_file() else project_root())
    if app_dir is None:
        parser.error("cannot find the fedrl project; pass --app PATH")
    # SIGTERM (kill, CI timeouts) must still run the clean-up below, like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    with LocalSimulation(args.num_supernodes, args.cpus_per_client) as sim:
        result = sim.run(app_dir, args.run_config)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
