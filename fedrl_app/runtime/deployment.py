"""LocalDeployment: a real `flower-superlink` with N `flower-supernode`s on loopback, for tests and trials.

Insecure, or TLS with certificates from `fedrl_app.runtime.tls`, optionally with SuperNode
authentication (each SuperNode's public key registered with `flwr supernode register`).
Every process runs in its own session and is stopped by process group on exit.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from fedrl_app.runtime.launch import CONNECTION, LocalSimulation, free_port
from fedrl_app.runtime.tls import generate_certificates


class LocalDeployment(LocalSimulation):
    """SuperLink + `num_supernodes` SuperNodes, each with its own partition-id / num-partitions."""

    def __init__(self, num_supernodes: int = 2, *, tls: bool = False, auth: bool = False,
                 flwr_home: Path | None = None, startup_timeout: float = 60.0, state_dir: Path | None = None) -> None:
        super().__init__(num_supernodes=num_supernodes, flwr_home=flwr_home, startup_timeout=startup_timeout)
        if auth and not tls:
            raise ValueError("SuperNode authentication needs TLS (flower-superlink refuses it otherwise)")
        self.tls, self.auth = tls, auth
        self.state_dir = state_dir  # each SuperNode persists its client state under state_dir/node-<i>
        self.certs: dict[str, Path] = {}
        self.supernodes: list[subprocess.Popen] = []

    def connection_toml(self) -> str:
        security = (f'root-certificates = "{self.certs["ca.crt"]}"\n' if self.tls else "insecure = true\n")
        return f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{self.port}"\n' + security

    def superlink_args(self) -> list[str]:
        args = ["--isolation", "subprocess", "--host", "127.0.0.1", "--port", str(self.port),
                "--disable-runtime-dependency-installation"]
        if self.tls:
            args += ["--ssl-ca-certfile", str(self.certs["ca.crt"]), "--ssl-certfile", str(self.certs["server.pem"]),
                     "--ssl-keyfile", str(self.certs["server.key"])]
        else:
            args.append("--insecure")
        return args + (["--enable-supernode-auth"] if self.auth else [])

    def open_health(self):
        if not self.tls:
            return super().open_health()
        context = ssl.create_default_context(cafile=str(self.certs["ca.crt"]))
        return urllib.request.urlopen(f"https://127.0.0.1:{self.port}/health", timeout=1, context=context)

    def __enter__(self) -> LocalDeployment:
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        if self.tls:
            self.certs = generate_certificates(self.flwr_home / "certs", supernodes=self.num_supernodes if self.auth else 0)
        super().__enter__()
        try:
            for i in range(self.num_supernodes):
                if self.auth:
                    subprocess.run([shutil.which("flwr") or "flwr", "supernode", "register",
                                    str(self.certs[f"supernode-{i}.pub"]), CONNECTION],
                                   env=self.env, check=True, capture_output=True, text=True, timeout=60)
                self.supernodes.append(self.start(f"supernode-{i}", ["flower-supernode", *self.supernode_args(i)]))
        except Exception:
            self.close()
            raise
        return self

    def supernode_args(self, i: int) -> list[str]:
        node_config = f"partition-id={i} num-partitions={self.num_supernodes}"
        if self.state_dir is not None:
            node_config += f' state-dir="{self.state_dir / f"node-{i}"}"'
        args = ["--superlink", f"127.0.0.1:{self.port}", "--port", str(free_port()), "--isolation", "subprocess",
                "--node-config", node_config]
        if self.tls:
            args += ["--root-certificates", str(self.certs["ca.crt"])]
        else:
            args.append("--insecure")
        if self.auth:
            args += ["--auth-supernode-private-key", str(self.certs[f"supernode-{i}"]),
                     "--auth-supernode-public-key", str(self.certs[f"supernode-{i}.pub"])]
        return args

    def kill_supernode(self, i: int) -> None:
        """Stop SuperNode i hard (a crash), for fault tests."""
        from fedrl_app.runtime.launch import stop_process_group

        stop_process_group(self.supernodes[i], grace_s=0.1)

    def restart_supernode(self, i: int) -> None:
        """Start SuperNode i again with the same identity and partition."""
        self.supernodes[i] = self.start(f"supernode-{i}-restart-{int(time.time())}",
                                        ["flower-supernode", *self.supernode_args(i)])
