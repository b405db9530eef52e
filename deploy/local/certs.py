"""nginx's certificate for the loopback stack: a self-signed CA and a server certificate."""

from __future__ import annotations

from pathlib import Path

from deploy.local import render
from deploy.local.procs import run

EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-sha256", "-nodes"]


def make_certificate(directory: Path, openssl: str) -> None:
    """ca.crt/ca.key and server.crt/server.key (localhost and 127.0.0.1) in ``directory``;
    clients verify nginx against ca.crt."""
    directory.mkdir()
    ca_crt, ca_key = directory / "ca.crt", directory / "ca.key"
    csr, ext = directory / "server.csr", directory / "server.ext"
    ca_subject = ["-subj", "/CN=LLM Observatory local stack CA"]
    ca_extensions = [
        *("-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
    ]
    run(
        [
            openssl,
            "req",
            "-x509",
            *EC_KEY,
            "-days",
            "30",
            *ca_subject,
            *ca_extensions,
            "-keyout",
            str(ca_key),
            "-out",
            str(ca_crt),
        ]
    )
    run(
        [
            openssl,
            "req",
            *EC_KEY,
            "-subj",
            f"/CN={render.UI_HOST}",
            "-keyout",
            str(directory / "server.key"),
            "-out",
            str(csr),
        ]
    )
    ext.write_text(
        f"subjectAltName=DNS:{render.UI_HOST},IP:{render.API_HOST}\n"
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    signing = ["-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial", "-extfile", str(ext)]
    run(
        [
            openssl,
            "x509",
            "-req",
            "-sha256",
            "-days",
            "30",
            "-in",
            str(csr),
            *signing,
            "-out",
            str(directory / "server.crt"),
        ]
    )
    for path in directory.glob("*.key"):
        path.chmod(0o600)
