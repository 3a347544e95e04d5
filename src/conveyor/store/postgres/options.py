"""PostgreSQL store URLs.

    postgresql://user:password@host:5432/database
    postgresql://...?schema=conveyor_billing   the installation's own schema
                                              (default: conveyor)
    postgresql://...?pool_max=20             connections per node (pool_min too)
    postgresql://...?migrate=false           never change the schema at open:
                                              refuse to open an old one instead
                                              (run ``conveyor migrate`` first)
    postgresql://...?vacuum_every=5          seconds between VACUUMs of the
                                              churning tables by one node (0:
                                              never; leave it to autovacuum)

Any other query parameter (sslmode, ...) goes to the driver unchanged.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from conveyor.core.errors import InvalidArgument

SCHEMES = ("postgresql", "postgres")
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_OURS = ("schema", "pool_min", "pool_max", "migrate", "vacuum_every")


@dataclass(frozen=True)
class PostgresOptions:
    dsn: str  # for the driver, without the parameters above
    schema: str = "conveyor"
    pool_min: int = 1
    pool_max: int = 10
    migrate: bool = True
    vacuum_every: float = 5.0
    connect_timeout: float = 10.0
    application_name: str = "conveyor"

    @property
    def redacted(self) -> str:
        """The DSN without its password, for logs and errors."""
        parts = urllib.parse.urlsplit(self.dsn)
        if parts.password is None:
            return self.dsn
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def is_postgres_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SCHEMES and "://" in url


def parse_url(url: str) -> PostgresOptions:
    if not is_postgres_url(url):
        raise InvalidArgument(f"not a PostgreSQL URL: {url!r} (postgresql://user@host/db)")
    parts = urllib.parse.urlsplit(url)
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in pairs if k in _OURS}
    rest = [(k, v) for k, v in pairs if k not in _OURS]
    dsn = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(rest)))
    schema = ours.get("schema", "conveyor")
    if not _SCHEMA.match(schema):
        raise InvalidArgument(
            f"bad schema {schema!r}: lowercase letters, digits and _, starting with a letter"
            " or _, at most 63 characters"
        )
    pool_min = _integer(ours, "pool_min", 1)
    pool_max = _integer(ours, "pool_max", max(10, pool_min))
    if not 0 <= pool_min <= pool_max or pool_max < 1:
        raise InvalidArgument("pool sizes: 0 <= pool_min <= pool_max, pool_max >= 1")
    migrate = ours.get("migrate", "true").lower()
    if migrate not in ("true", "false", "1", "0", "yes", "no"):
        raise InvalidArgument("migrate is true or false")
    try:
        vacuum_every = float(ours.get("vacuum_every", "5"))
    except ValueError:
        raise InvalidArgument("vacuum_every is a number of seconds") from None
    if not vacuum_every >= 0:
        raise InvalidArgument("vacuum_every is a number of seconds, 0 or more")
    return PostgresOptions(
        dsn=dsn,
        schema=schema,
        pool_min=pool_min,
        pool_max=pool_max,
        migrate=migrate in ("true", "1", "yes"),
        vacuum_every=vacuum_every,
    )


def _integer(params: dict[str, str], name: str, default: int) -> int:
    if name not in params:
        return default
    try:
        return int(params[name])
    except ValueError:
        raise InvalidArgument(f"{name} is an integer, not {params[name]!r}") from None


def quote_ident(name: str) -> str:
    """A schema name (validated by parse_url) as an SQL identifier."""
    if not _SCHEMA.match(name):
        raise InvalidArgument(f"bad schema name {name!r}")
    return f'"{name}"'
