"""Self-signed TLS material for a loopback deployment: `python -m fedrl_app.runtime.tls OUT_DIR`.

Writes a CA (ca.key, ca.crt) and a SuperLink certificate signed by it (server.key,
server.pem) valid for 127.0.0.1 and localhost, plus one ECDSA key pair per SuperNode
(supernode-<i>, supernode-<i>.pub) for SuperNode authentication. Uses the openssl CLI.
For tests and local trials only: a real federation uses certificates from its own CA.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SERVER_EXTENSIONS = """[req]
distinguished_name = dn
prompt = no
[dn]
CN = 127.0.0.1
[ext]
subjectAltName = IP:127.0.0.1,IP:::1,DNS:localhost
basicConstraints = CA:FALSE
keyUsage = digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
"""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, text=True)


def generate_certificates(out_dir: Path, supernodes: int = 0, days: int = 30) -> dict[str, Path]:
    """Create the CA, the SuperLink certificate and `supernodes` auth key pairs in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "server.conf").write_text(SERVER_EXTENSIONS)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", str(days), "-subj", "/CN=fedrl-test-ca", cwd=out)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-config", "server.conf", cwd=out)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", str(days), "-extfile", "server.conf", "-extensions", "ext", cwd=out)
    paths = {name: out / name for name in ("ca.crt", "ca.key", "server.pem", "server.key")}
    for i in range(supernodes):
        key = f"supernode-{i}"
        subprocess.run(["ssh-keygen", "-t", "ecdsa", "-b", "384", "-N", "", "-q", "-f", key], cwd=out, check=True)
        paths[key], paths[f"{key}.pub"] = out / key, out / f"{key}.pub"
    return paths


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m fedrl_app.runtime.tls OUT_DIR [NUM_SUPERNODE_KEYS]")
    for name, path in generate_certificates(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) == 3 else 0).items():
        print(f"{name}: {path}")
