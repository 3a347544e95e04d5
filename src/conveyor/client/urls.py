"""Broker URLs, and the transport each one opens.

    conveyor://host:7710                 the native protocol (default port 7710)
    conveyor://h1:7710,h2:7710           several broker nodes, tried in turn
    conveyors://host:7710                the same over TLS
    conveyor://:TOKEN@host:7710          with an auth token (also TOKEN@host,
                                         one for every node of a multi-address
                                         URL: conveyor://:TOKEN@h1,h2)
    conveyor://host?token=TOKEN          the same, as a query parameter
    sqlite:///relative/path.db           an embedded broker in this process
    sqlite:////absolute/path.db          (SQLAlchemy's convention for slashes)
    sqlite:///path.db?durability=os      fsync (default), os
    memory://                            an embedded broker, nothing kept
    postgresql://user@host/db?schema=s   an embedded broker node on a shared
                                         PostgreSQL store (with other nodes)

With no URL, ``CONVEYOR_URL`` is used, then ``conveyor://127.0.0.1:7710``.
The token: the ``token=`` argument, else the URL's userinfo, else its
``?token=``, else ``CONVEYOR_TOKEN``. A token is never logged; ``redact``
hides it in a URL shown in a message.
"""

from __future__ import annotations

import os
import re
import ssl
import urllib.parse

from conveyor.client.transport import Transport
from conveyor.core.errors import InvalidArgument

DEFAULT_URL = "conveyor://127.0.0.1:7710"
DEFAULT_PORT = 7710


def resolve(url: str | None) -> str:
    return url or os.environ.get("CONVEYOR_URL") or DEFAULT_URL


SCHEMES = "conveyor://, conveyors://, sqlite:///, memory:// or postgresql://"


def redact(url: str) -> str:
    """The URL with its userinfo and any ``token=`` value hidden (a token in
    userinfo is a password; so is a PostgreSQL URL's)."""
    hidden = re.sub(r"(://)[^/?#]*@", r"\1***@", url)
    return re.sub(r"([?&]token=)[^&#]*", r"\1***", hidden)


def split_userinfo(netloc: str) -> tuple[str | None, str]:
    """The token a URL's userinfo carries (``:TOKEN@`` or ``TOKEN@``;
    Conveyor has no users, so ``user:TOKEN@`` is TOKEN), and the hosts."""
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        return None, netloc
    user, colon, password = userinfo.partition(":")
    token = urllib.parse.unquote(password if colon else user)
    return token or None, hosts


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
) -> Transport:
    """The transport for a URL (not yet connected)."""
    try:
        parsed = urllib.parse.urlsplit(url)
    except ValueError as exc:
        raise InvalidArgument(f"bad broker URL {redact(url)!r}: {exc}") from None
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
        in_userinfo, hosts = split_userinfo(parsed.netloc)
        return NativeTransport(
            parse_addresses(hosts),
            token=token
            or in_userinfo
            or query.get("token")
            or os.environ.get("CONVEYOR_TOKEN")
            or None,
            name=name,
            ssl_context=context,
            timeout=timeout,
            connect_timeout=connect_timeout,
        )
    if scheme in ("sqlite", "memory", "postgresql", "postgres"):
        from conveyor.client.embedded import EmbeddedTransport
        from conveyor.store.urls import open_store

        return EmbeddedTransport(open_store(url), name=name)
    raise InvalidArgument(f"unsupported broker URL {redact(url)!r}: use {SCHEMES}")
