"""Named SQL queries, kept in .sql files per dialect.

A file holds blocks that each start with a ``-- name: some_query`` line. The
loader fills a frozen dataclass whose fields are the query names, typed as
``LiteralString``: a query is always one of these constants, never a string
built at run time, and a missing or unknown name fails at import.
"""

from __future__ import annotations

import dataclasses
import re
from importlib import resources
from typing import LiteralString, TypeVar, cast

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)

Q = TypeVar("Q")


def parse_queries(text: str) -> dict[str, LiteralString]:
    queries: dict[str, LiteralString] = {}
    parts = _NAME.split(text)
    # parts: [preamble, name1, body1, name2, body2, ...]
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        sql = "\n".join(
            line for line in body.strip().splitlines() if not line.lstrip().startswith("--")
        ).strip()
        # mypy reads LiteralString as str; the cast keeps the intent for other checkers.
        queries[name] = cast(LiteralString, sql.rstrip(";"))  # type: ignore[redundant-cast]
    return queries


def load_queries(package: str, filename: str, into: type[Q]) -> Q:
    text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    queries = parse_queries(text)
    fields = {f.name for f in dataclasses.fields(into)}  # type: ignore[arg-type]
    missing, extra = fields - queries.keys(), queries.keys() - fields
    if missing or extra:
        raise RuntimeError(
            f"{filename}: missing queries {sorted(missing)}, unknown {sorted(extra)}"
        )
    return into(**queries)


def migrations(package: str) -> list[tuple[int, str]]:
    """The numbered migration files of a dialect: ``NNNN_name.sql``, in order."""
    found = []
    for entry in resources.files(package).iterdir():
        match = re.match(r"^(\d{4})_[a-z0-9_]+\.sql$", entry.name)
        if match:
            found.append((int(match.group(1)), entry.read_text(encoding="utf-8")))
    found.sort()
    numbers = [n for n, _ in found]
    if numbers != list(range(1, len(numbers) + 1)):
        raise RuntimeError(f"migrations of {package} are not numbered 1..N: {numbers}")
    return found
