"""The broker service: one store, one Broker, its network front ends, and a
clean shutdown.

SIGTERM or SIGINT: stop accepting connections, end the open ones (their
sessions close and their leases are released, so other consumers get the
messages), let the store writer finish every operation already submitted,
and close the store. Nothing acknowledged to a producer is lost: a reply was
only ever sent after its commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from conveyor.broker.broker import Broker, BrokerConfig
from conveyor.core.errors import InvalidArgument
from conveyor.server import native
from conveyor.server.native import NativeServer
from conveyor.store.base import Store

if TYPE_CHECKING:
    from conveyor.server.http import HttpApi

log = logging.getLogger("conveyor.server")


@dataclass(frozen=True)
class ServiceOptions:
    data: Path = Path("conveyor-data")
    store_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 7710
    http_port: int | None = 7711
    durability: str = "fsync"
    token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    heartbeat: float = 2.0
    session_timeout: float = 10.0
    # What clients can make the server hold (docs/operations.md, "Limits").
    max_connections: int = native.DEFAULT_MAX_CONNECTIONS
    handshake_timeout: float = native.DEFAULT_HANDSHAKE_TIMEOUT
    max_connection_bytes: int = native.DEFAULT_CONNECTION_BYTES
    max_total_bytes: int = native.DEFAULT_TOTAL_BYTES


def open_store(options: ServiceOptions) -> Store:
    from conveyor.store.sqlite.store import SqliteStore

    url = options.store_url
    if url is None:
        if options.durability == "memory":
            return SqliteStore(None, durability="memory")
        return SqliteStore(options.data / "conveyor.db", durability=options.durability)  # type: ignore[arg-type]
    if url.startswith("sqlite:///"):
        return SqliteStore(url[len("sqlite:///") :], durability=options.durability)  # type: ignore[arg-type]
    if url.startswith("memory://"):
        return SqliteStore(None, durability="memory")
    if url.startswith(("postgresql://", "postgres://")):
        # Durability is the database's (synchronous_commit): --durability is for SQLite.
        try:
            from conveyor.store.postgres.store import PostgresStore
        except ImportError as exc:
            raise InvalidArgument(
                f"a PostgreSQL store needs asyncpg ({exc.name} is missing):"
                " pip install 'conveyor-queue[postgres]'"
            ) from None
        return PostgresStore(url)
    raise InvalidArgument(
        f"unsupported store URL {url!r}: sqlite:///path.db, memory:// or postgresql://..."
    )


def tls_context(options: ServiceOptions) -> ssl.SSLContext | None:
    if options.tls_cert is None and options.tls_key is None:
        return None
    if options.tls_cert is None or options.tls_key is None:
        raise InvalidArgument("TLS needs both --tls-cert and --tls-key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(options.tls_cert, options.tls_key)
    return context


class Service:
    def __init__(self, options: ServiceOptions) -> None:
        self.options = options
        config = BrokerConfig(session_timeout=options.session_timeout)
        self.broker = Broker(open_store(options), config)
        context = tls_context(options)
        self.native = NativeServer(
            self.broker,
            host=options.host,
            port=options.port,
            token=options.token,
            ssl_context=context,
            heartbeat=options.heartbeat,
            max_connections=options.max_connections,
            handshake_timeout=options.handshake_timeout,
            max_connection_bytes=options.max_connection_bytes,
            max_total_bytes=options.max_total_bytes,
        )
        self.http: HttpApi | None = None
        if options.http_port is not None:
            try:
                from conveyor.server.http import HttpApi
            except ImportError as exc:
                raise InvalidArgument(
                    f"the HTTP API needs the server extra ({exc.name} is missing):"
                    " pip install 'conveyor-queue[server]', or serve without it: --http-port -1"
                ) from None
            self.http = HttpApi(self.broker, token=options.token)
        self._tls = context
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        await self.broker.start()
        try:
            await self.native.start()
            if self.http is not None:
                assert self.options.http_port is not None
                await self.http.start(self.options.host, self.options.http_port, self._tls)
        except BaseException:
            await self.native.stop()
            await self.broker.close()
            raise
        http = "" if self.http is None else f", HTTP on port {self.http.port}"
        log.info(
            "conveyor serving on %s: native port %d%s; store %s%s",
            self.options.host,
            self.native.port,
            http,
            self.broker.store.capabilities.name,
            "" if self.options.token is None else "; token auth on",
        )

    def stop(self) -> None:
        self._stopping.set()

    async def run_until_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        await self._stopping.wait()
        log.info("shutting down")
        await self.close()

    async def close(self) -> None:
        # Both front ends stop at once: the native port is not left serving
        # through the HTTP API's grace for requests in flight.
        stops = [self.native.stop()]
        if self.http is not None:
            stops.append(self.http.stop())
        await asyncio.gather(*stops)
        await self.broker.close()
        log.info("stopped")
