"""The broker service: one store, one Broker, its network front ends, and a
clean shutdown.

Exposure: a broker listens on loopback by default. On any other address it
requires a token (``check_exposure``), unless told ``insecure``: whoever can
reach it could otherwise create, read, purge and delete queues.

SIGTERM or SIGINT: stop accepting connections, end the open ones (their
sessions close and their leases are released, so other consumers get the
messages), let the store writer finish every operation already submitted,
and close the store. Nothing acknowledged to a producer is lost: a reply was
only ever sent after its commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from conveyor.broker.broker import Broker
from conveyor.broker.config import BrokerConfig
from conveyor.core.errors import InvalidArgument
from conveyor.server import native
from conveyor.server.native import NativeServer
from conveyor.store import urls as store_urls
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
    token_source: str = "--token"  # where the token came from, for the log (never the token)
    insecure: bool = False  # serve without a token on an address other than loopback
    # What clients can make the server hold (docs/operations.md, "Limits").
    max_connections: int = native.DEFAULT_MAX_CONNECTIONS
    handshake_timeout: float = native.DEFAULT_HANDSHAKE_TIMEOUT
    max_connection_bytes: int = native.DEFAULT_CONNECTION_BYTES
    max_total_bytes: int = native.DEFAULT_TOTAL_BYTES


def open_store(options: ServiceOptions) -> Store:
    """The store the options name (store/urls.py opens every store URL)."""
    return store_urls.open_store(options.store_url, options.durability, data=options.data)


MAX_TOKEN_FILE = 4096  # bytes of a token file


def read_token_file(path: Path) -> str:
    """The token a file holds: its one line, without the line break."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TOKEN_FILE + 1)
    except OSError as exc:
        raise InvalidArgument(f"cannot read --token-file {path}: {exc.strerror}") from None
    if len(data) > MAX_TOKEN_FILE:
        raise InvalidArgument(f"--token-file {path} is over {MAX_TOKEN_FILE} bytes: not a token")
    try:
        token = data.decode().rstrip("\r\n")
    except UnicodeDecodeError:
        raise InvalidArgument(f"--token-file {path} is not UTF-8 text") from None
    if not token:
        raise InvalidArgument(f"--token-file {path} is empty")
    if "\n" in token or "\r" in token:
        raise InvalidArgument(f"--token-file {path} holds more than one line")
    if path.stat().st_mode & 0o077:
        log.warning("--token-file %s may be read by other users: chmod 600 %s", path, path)
    return token


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1: only this machine can connect."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False  # a name: whatever it resolves to, not known to be loopback
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def check_exposure(options: ServiceOptions) -> None:
    """Refuse to serve without a token where other machines can connect."""
    if options.token is None and not options.insecure and not is_loopback(options.host):
        raise InvalidArgument(
            f"refusing to serve on {options.host} without a token: anyone who can reach it"
            " could create, read, purge and delete queues. Set one with --token-file PATH,"
            " CONVEYOR_TOKEN or --token (clients give the same; see docs/security.md), or"
            " pass --insecure to serve without one"
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
        check_exposure(options)
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
            "conveyor serving on %s: native port %d%s; store %s; %s%s",
            self.options.host,
            self.native.port,
            http,
            self.broker.store.capabilities.name,
            self._auth_summary(),
            "" if self._tls is None else "; TLS on",
        )
        if self.options.token is None and not is_loopback(self.options.host):
            log.warning(
                "no token on %s (--insecure): anyone who can reach it may use every queue",
                self.options.host,
            )

    def _auth_summary(self) -> str:
        if self.options.token is not None:
            return f"token auth on (token from {self.options.token_source})"
        if is_loopback(self.options.host):
            return "no token auth (loopback only)"
        return "NO token auth (--insecure)"

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
