"""A throwaway certificate authority for the TLS tests (tests/test_tls.py).

Made with the ``openssl`` command-line program (no Python dependency): a CA, and a
certificate and key for each role distributed knows (scheduler, worker, client), signed by
that CA, valid for ``127.0.0.1`` and ``localhost``, for both ends of a connection
(distributed authenticates both sides).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROLES = ("scheduler", "worker", "client")

_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = dynflow-test

[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[v3_leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


@dataclass(frozen=True)
class TLSFiles:
    """Paths of the CA certificate, and of each role's certificate and key (PEM)."""

    ca_file: Path
    certs: dict[str, Path]
    keys: dict[str, Path]

    def cli_args(self, role: str) -> list[str]:
        """The ``dask scheduler`` / ``dask worker`` options for ``role``."""
        return [
            "--tls-ca-file",
            str(self.ca_file),
            "--tls-cert",
            str(self.certs[role]),
            "--tls-key",
            str(self.keys[role]),
        ]

    def client_env(self) -> dict[str, str]:
        """The dask config of a TLS client, as environment variables."""
        return {
            "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(self.ca_file),
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": str(self.certs["client"]),
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": str(self.keys["client"]),
            "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        }


def make_certs(directory: Path) -> TLSFiles:
    """A CA and a certificate/key per role in ``directory``; skips without ``openssl``."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl program is needed to make test certificates")
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "openssl.cnf"
    config.write_text(_OPENSSL_CONFIG)

    def run(*args: str) -> None:
        proc = subprocess.run(
            [openssl, *args],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")

    ca_file, ca_key = directory / "ca.pem", directory / "ca-key.pem"
    # -new -x509: a self-signed certificate (works with OpenSSL 1.1.1+, 3.x and LibreSSL)
    run(
        "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
        "-config", str(config), "-extensions", "v3_ca", "-subj", "/CN=dynflow-test-ca",
        "-keyout", str(ca_key), "-out", str(ca_file),
    )  # fmt: skip
    certs, keys = {}, {}
    for serial, role in enumerate(ROLES, start=2):
        key, csr, cert = (directory / f"{role}{suffix}" for suffix in ("-key.pem", ".csr", ".pem"))
        run(
            "req", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256", "-config", str(config),
            "-subj", f"/CN=dynflow-test-{role}", "-keyout", str(key), "-out", str(csr),
        )  # fmt: skip
        run(
            "x509", "-req", "-in", str(csr), "-CA", str(ca_file), "-CAkey", str(ca_key),
            "-set_serial", str(serial), "-sha256", "-days", "2",
            "-extfile", str(config), "-extensions", "v3_leaf", "-out", str(cert),
        )  # fmt: skip
        certs[role], keys[role] = cert, key
    return TLSFiles(ca_file=ca_file, certs=certs, keys=keys)
