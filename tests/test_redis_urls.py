"""The Redis URL forms a user can give, each against a real redis-server: TLS and a unix socket."""

from __future__ import annotations

import subprocess
from pathlib import Path

from skunkqueue import SkunkQueue

from .servers import RedisServer, free_port, require_binary


def _round_trip(url: str) -> None:
    queue = SkunkQueue("urlcheck", url=url)

    @queue.event(routes=["x"])
    def noop() -> None: ...

    run = noop.fire()
    assert queue.get(run.id) is not None
    assert run.state == "queued"
    assert queue.cancel(run.id)
    queue.close()


def test_unix_socket_url(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    server = RedisServer(
        tmp_path, None, "--unixsocket", str(sock), "--unixsocketperm", "700"
    ).start()
    try:
        _round_trip(f"unix://{sock}?db=0")
    finally:
        server.stop()


def test_rediss_url_over_tls(tmp_path: Path) -> None:
    openssl = require_binary("openssl")  # makes the test certificate
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    tls_port = free_port()
    server = RedisServer(
        tmp_path, None, "--tls-port", str(tls_port), "--tls-cert-file", str(cert),
        "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
    ).start()  # fmt: skip
    try:
        _round_trip(f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert}")
    finally:
        server.stop()
