"""Connecting fails fast and says what to do (client/native.py, "Connecting";
issue 14), and the token is taken the ways users try first (client/urls.py).

Where nothing listens, AsyncClient, Client and ``task.delay()`` raise
BrokerUnreachable after about ``connect_timeout`` (1 s by default; asserted
under 3 s, the bound given for this work), naming the address, the reason
and what to check. The native client pointed at the HTTP port says so at
once. A broker started with ``--token`` takes the token from the URL's
userinfo, ``?token=``, ``CONVEYOR_TOKEN`` or the ``token=`` argument, in
that order of precedence after the argument, and no log line shows it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import Callable, Iterator

import pytest
from integration_support import ServerProcess, StartServer, free_port

import conveyor
from conveyor.core.wire import ProtocolError, Unauthorized

FAST = 3.0  # seconds: "within about 1 s", with room for a loaded machine


def refused_message(port: int) -> str:
    return f"no broker at 127.0.0.1:{port} (connection refused): is `conveyor serve` running there?"


def timed(action: Callable[[], object]) -> tuple[BaseException, float]:
    started = time.monotonic()
    with pytest.raises(conveyor.ConveyorError) as caught:
        action()
    return caught.value, time.monotonic() - started


# -- nothing listening ------------------------------------------------------------------


def test_async_client_where_nothing_listens() -> None:
    port = free_port()

    async def connect() -> None:
        async with conveyor.AsyncClient(f"conveyor://127.0.0.1:{port}"):
            pass

    error, took = timed(lambda: asyncio.run(connect()))
    assert isinstance(error, conveyor.BrokerUnreachable)
    assert error.code == "broker_unreachable"
    assert error.message == refused_message(port)
    assert took < FAST


def test_sync_client_where_nothing_listens() -> None:
    port = free_port()
    client = conveyor.Client(f"conveyor://127.0.0.1:{port}")
    try:
        error, took = timed(client.connect)
        assert isinstance(error, conveyor.BrokerUnreachable)
        assert error.message == refused_message(port)
        assert took < FAST
        # A call without connect() first fails the same way.
        error, took = timed(lambda: client.enqueue("q", b"x"))
        assert isinstance(error, conveyor.BrokerUnreachable)
        assert took < FAST
    finally:
        client.close()


def test_task_delay_where_nothing_listens() -> None:
    port = free_port()
    app = conveyor.App(f"conveyor://127.0.0.1:{port}")

    @app.task(queue="work")
    def add(a: int, b: int) -> int:
        return a + b

    try:
        error, took = timed(lambda: add.delay(1, 2))
        assert isinstance(error, conveyor.BrokerUnreachable)
        assert error.message == refused_message(port)
        assert took < FAST
    finally:
        app.close()


def test_every_address_is_named_with_its_reason() -> None:
    first, second = free_port(), free_port()
    url = f"conveyor://127.0.0.1:{first},no-such-host.invalid:{second}"
    error, took = timed(lambda: conveyor.Client(url).connect())
    assert error.message == (
        f"no broker at 127.0.0.1:{first} (connection refused),"
        f" no-such-host.invalid:{second} (unknown host): is `conveyor serve` running there?"
    )
    assert took < FAST


def test_connect_timeout_is_how_long_a_new_client_tries() -> None:
    port = free_port()
    client = conveyor.Client(f"conveyor://127.0.0.1:{port}", connect_timeout=0.2)
    try:
        error, took = timed(client.connect)
        assert isinstance(error, conveyor.BrokerUnreachable)
        assert took < 2.0
    finally:
        client.close()


def test_a_bad_scheme_lists_the_schemes() -> None:
    with pytest.raises(conveyor.InvalidArgument) as caught:
        conveyor.Client("redis://:hunter2@localhost:6379")
    message = caught.value.message
    for scheme in ("conveyor://", "conveyors://", "sqlite:///", "memory://", "postgresql://"):
        assert scheme in message
    assert "hunter2" not in message, "the token in the URL was shown"


# -- the HTTP port ---------------------------------------------------------------------


HTTP_PORT = "is an HTTP port, not Conveyor's: conveyor:// URLs name the native protocol's port"


def test_async_client_at_the_http_port(server: ServerProcess) -> None:
    async def connect() -> None:
        await conveyor.AsyncClient(f"conveyor://127.0.0.1:{server.http_port}").connect()

    error, took = timed(lambda: asyncio.run(connect()))
    assert isinstance(error, ProtocolError)
    assert error.message.startswith(f"127.0.0.1:{server.http_port} {HTTP_PORT}")
    assert "7711" in error.message and "7710" in error.message
    assert took < FAST  # not retried


def test_sync_client_at_the_http_port(server: ServerProcess) -> None:
    client = conveyor.Client(f"conveyor://127.0.0.1:{server.http_port}")
    try:
        error, took = timed(client.connect)
        assert isinstance(error, ProtocolError)
        assert HTTP_PORT in error.message
        assert took < FAST
    finally:
        client.close()


# -- tokens ------------------------------------------------------------------------------

TOKEN = "s3cr/t+=:@"  # characters a URL must percent-encode
QUOTED = urllib.parse.quote(TOKEN, safe="")


@pytest.fixture
def secured(start_server: StartServer) -> Iterator[ServerProcess]:
    yield start_server("--token", TOKEN)


@pytest.mark.parametrize(
    "url_of",
    [
        lambda port: f"conveyor://:{QUOTED}@127.0.0.1:{port}",
        lambda port: f"conveyor://{QUOTED}@127.0.0.1:{port}",
        lambda port: f"conveyor://127.0.0.1:{port}?token={QUOTED}",
        lambda port: f"conveyor://:{QUOTED}@127.0.0.1:{free_port()},127.0.0.1:{port}",
    ],
    ids=["password", "user", "query", "multi-address"],
)
def test_the_token_in_the_url(
    secured: ServerProcess, url_of: Callable[[int], str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with conveyor.Client(url_of(secured.port)) as client:
        client.create_queue("secured")
        assert client.enqueue("secured", b"in").id

    async def consume() -> bytes:
        async with conveyor.AsyncClient(url_of(secured.port)) as client:
            (got,) = await client.receive("secured", wait=5)
            await got.ack()
            return bytes(got.body)

    assert asyncio.run(consume()) == b"in"
    assert TOKEN not in caplog.text and QUOTED not in caplog.text


def test_the_token_from_the_environment(
    secured: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_TOKEN", TOKEN)
    with conveyor.Client(secured.url) as client:
        assert client.queues() is not None


def test_the_token_argument_comes_first(
    secured: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_TOKEN", "wrong-env")
    url = f"conveyor://:wrong-userinfo@127.0.0.1:{secured.port}?token=wrong-query"
    with conveyor.Client(url, token=TOKEN) as client:
        assert client.queues() is not None
    # Then the userinfo, then the query, then the environment.
    with conveyor.Client(f"conveyor://:{QUOTED}@127.0.0.1:{secured.port}?token=no") as client:
        assert client.queues() is not None
    with conveyor.Client(f"conveyor://127.0.0.1:{secured.port}?token={QUOTED}") as client:
        assert client.queues() is not None


def test_a_wrong_token_is_refused_at_once(secured: ServerProcess) -> None:
    client = conveyor.Client(f"conveyor://:nope@127.0.0.1:{secured.port}")
    try:
        error, took = timed(client.connect)
        assert isinstance(error, Unauthorized)
        assert took < FAST
    finally:
        client.close()
