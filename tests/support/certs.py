"""Test certificates made with the `openssl` command: a CA and a server certificate it signed."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

VALID_DAYS = "2"


@dataclass(frozen=True)
class TestPki:
    """A CA and a server certificate for 127.0.0.1/localhost, plus an unrelated CA."""

    __test__ = False  # not a pytest test class

    ca_cert: Path
    server_cert: Path
    server_key: Path
    other_ca_cert: Path  # trusts nothing the broker presents

    def tls_listener(self) -> dict[str, Path]:
        """The mapping MosquittoBroker(tls_listener=...) expects."""
        return {"cafile": self.ca_cert, "certfile": self.server_cert, "keyfile": self.server_key}


def _openssl(*args: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("openssl is not installed (apt-get install openssl)")
    subprocess.run([openssl, *args], check=True, capture_output=True)


def _make_ca(workdir: Path, name: str) -> tuple[Path, Path]:
    key, cert = workdir / f"{name}.key", workdir / f"{name}.crt"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
        "-days", VALID_DAYS, "-subj", f"/CN=picluster test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return key, cert


def make_pki(workdir: Path) -> TestPki:
    """Write a CA, a server key and certificate (SAN 127.0.0.1, localhost) and a second CA."""
    workdir.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _make_ca(workdir, "ca")
    _, other_ca = _make_ca(workdir, "other-ca")
    server_key, csr = workdir / "server.key", workdir / "server.csr"
    server_cert, extensions = workdir / "server.crt", workdir / "server.ext"
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(server_key), "-out", str(csr),
        "-subj", "/CN=localhost",
    )  # fmt: skip
    extensions.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(server_cert), "-days", VALID_DAYS,
        "-extfile", str(extensions),
    )  # fmt: skip
    server_key.chmod(0o600)
    return TestPki(ca_cert, server_cert, server_key, other_ca)
