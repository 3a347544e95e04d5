"""Broker URLs, and the transport each one opens.

    conveyor://host:7710                 the native protocol (default port 7710)
    conveyor://h1:7710,h2:7710           several broker nodes, tried in turn
    conveyors://host:7710                the same over TLS
    conveyor://host?token=SECRET         with an auth token
    sqlite:///relative/path.db           an embedded broker in this process
    sqlite:////absolute/path.db          (SQLAlchemy's convention for slashes)
    sqlite:///path.db?durability=os      fsync (default), os
    memory://                            an embedded broker, nothing kept
    postgresql://user@host/db?schema=s   an embedded broker node on a shared
                                         PostgreSQL store (with other nodes)

With no URL, ``CONVEYOR_URL`` is used, then ``conveyor://127.0.0.1:7710``.
"""

from __future__ import annotations

import os
import ssl
import urllib.parse
from typing import Any

from conveyor.core.errors import InvalidArgument

DEFAULT_URL = "conveyor://127.0.0.1:7710"
DEFAULT_PORT = 7710


def resolve(url: str | None) -> str:
    return url or os.environ.get("CONVEYOR_URL") or DEFAULT_URL


def parse_addresses(netloc: str) -> list[tuple[str, int]]:
    addresses = []
    for raw in netloc.split(","):
        part = raw.strip()
        if not part:
            continue
        if part.startswith("["):  # [::1]:7710
            host, _, rest = part[1:].partition("]")
            port_text = rest.lstrip(":")
        else:
            host, _, port_text = part.partition(":")
        try:
            port = int(port_text) if port_text else DEFAULT_PORT
        except ValueError:
            raise InvalidArgument(f"bad port in {part!r}") from None
        if not host or not 0 < port < 65536:
            raise InvalidArgument(f"bad broker address {part!r}")
        addresses.append((host, port))
    if not addresses:
        raise InvalidArgument("a conveyor:// URL names at least one host")
    return addresses


def open_transport(
    url: str,
    *,
    name: str = "",
    timeout: float = 30.0,
    connect_timeout: float = 1.0,
    token: str | None = None,
) -> Any:
    """The transport for a URL (not yet connected)."""
    parsed = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parsed.query))
    scheme = parsed.scheme.lower()
    if scheme in ("conveyor", "conveyors"):
        from conveyor.client.native import NativeTransport

        context = None
        if scheme == "conveyors":
            context = ssl.create_default_context(cafile=query.get("ca"))
            if query.get("verify") == "false":
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        return NativeTransport(
            parse_addresses(parsed.netloc),
            token=token or query.get("token") or os.environ.get("CONVEYOR_TOKEN"),
            name=name,
            ssl_context=context,
            timeout=timeout,
            connect_timeout=connect_timeout,
        )
    if scheme in ("sqlite", "memory"):
        from conveyor.client.embedded import EmbeddedTransport
        from conveyor.store.sqlite.store import SqliteStore

        if scheme == "memory":
            store = SqliteStore(None, durability="memory")
        else:
            path = url.split("://", 1)[1].split("?", 1)[0]
            if not path.startswith("/") or len(path) < 2:
                raise InvalidArgument(
                    f"bad sqlite URL {url!r}: sqlite:///relative.db or sqlite:////abs.db"
                )
            durability = query.get("durability", "fsync")
            if durability not in ("fsync", "os"):
                raise InvalidArgument(
                    "durability of a sqlite URL is fsync or os (memory:// for memory)"
                )
            store = SqliteStore(path[1:], durability=durability)  # type: ignore[arg-type]
        return EmbeddedTransport(store, name=name)
    if scheme in ("postgresql", "postgres"):
        from conveyor.client.embedded import EmbeddedTransport

        try:
            from conveyor.store.postgres.store import PostgresStore
        except ImportError as exc:
            raise InvalidArgument(
                f"a PostgreSQL store needs asyncpg ({exc.name} is missing):"
                " pip install 'conveyor-queue[postgres]'"
            ) from None
        return EmbeddedTransport(PostgresStore(url), name=name)
    raise InvalidArgument(
        f"unsupported broker URL {url!r}: conveyor://host:port, sqlite:///file.db, memory://"
        " or postgresql://user@host/db"
    )
