"""TLS and token auth of the native protocol and the HTTP API, against a
real `conveyor serve` process with a self-signed certificate."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import conveyor
from conveyor.client.native import ConnectionLost
from conveyor.core.wire import Unauthorized
from requires import unavailable

if shutil.which("openssl") is None:  # it makes the test certificate
    unavailable("needs the openssl command", module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, int, Path]]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    port, http = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "serve", "--data", str(tmp_path / "data"),
         "--port", str(port), "--http-port", str(http), "--token", "s3cret",
         "--tls-cert", str(cert), "--tls-key", str(key), "--log-level", "warning"],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield port, http, cert
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


def test_native_protocol_over_tls_with_a_token(tls_server: tuple[int, int, Path]) -> None:
    port, _, cert = tls_server
    url = f"conveyors://127.0.0.1:{port}?ca={cert}&token=s3cret"
    with conveyor.Client(url, timeout=5) as client:
        client.create_queue("secure")
        client.enqueue("secure", b"over tls")
        (got,) = client.receive("secure", wait=1)
        assert got.body == b"over tls"
        got.ack()


def test_a_wrong_token_is_refused(tls_server: tuple[int, int, Path]) -> None:
    port, _, cert = tls_server
    client = conveyor.Client(f"conveyors://127.0.0.1:{port}?ca={cert}&token=nope", timeout=3)
    with pytest.raises(Unauthorized):
        client.connect()
    client.close()


def test_plain_tcp_to_a_tls_port_does_not_connect(tls_server: tuple[int, int, Path]) -> None:
    port, _, _ = tls_server
    client = conveyor.Client(f"conveyor://127.0.0.1:{port}?token=s3cret", timeout=1)
    with pytest.raises(ConnectionLost):
        client.connect()
    client.close()


def test_http_needs_the_bearer_token_but_healthz_does_not(
    tls_server: tuple[int, int, Path],
) -> None:
    _, http, cert = tls_server
    context = ssl.create_default_context(cafile=str(cert))
    base = f"https://127.0.0.1:{http}"
    with urllib.request.urlopen(f"{base}/healthz", context=context) as response:
        assert json.load(response) == {"status": "ok"}
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{base}/v1/queues", context=context)
    assert refused.value.code == 401
    refused.value.close()
    request = urllib.request.Request(
        f"{base}/v1/queues", headers={"Authorization": "Bearer s3cret"}
    )
    with urllib.request.urlopen(request, context=context) as response:
        assert isinstance(json.load(response), list)
