"""Store URLs (store/urls.py): one factory opens every store, and
``conveyor serve``, ``conveyor migrate`` and the embedded client refuse a
bad URL with the same typed error."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.cli import main as cli_main
from conveyor.client.urls import open_transport
from conveyor.core.errors import InvalidArgument
from conveyor.server.service import ServiceOptions
from conveyor.server.service import open_store as service_store
from conveyor.store.postgres.store import PostgresStore
from conveyor.store.sqlite.store import SqliteStore
from conveyor.store.urls import open_store


@pytest.mark.parametrize(
    ("url", "path", "durability"),
    [
        ("sqlite:///app.db", "app.db", "fsync"),
        ("sqlite:////srv/q/app.db", "/srv/q/app.db", "fsync"),
        ("sqlite:///app.db?durability=os", "app.db", "os"),
        ("SQLite:///app.db?durability=fsync", "app.db", "fsync"),
        ("memory://", None, "memory"),
    ],
)
def test_a_sqlite_url_opens_its_file(url: str, path: str | None, durability: str) -> None:
    for store in (open_store(url), open_transport(url).broker.store):
        assert isinstance(store, SqliteStore)
        assert (store.path, store.durability) == (path and Path(path), durability)


def test_the_urls_durability_wins_over_the_callers() -> None:
    store = open_store("sqlite:///a.db?durability=os", "fsync")
    assert isinstance(store, SqliteStore) and store.durability == "os"
    store = service_store(ServiceOptions(store_url="sqlite:///a.db", durability="os"))
    assert isinstance(store, SqliteStore) and store.durability == "os"


def test_with_no_url_the_service_keeps_its_store_in_the_data_directory(tmp_path: Path) -> None:
    store = service_store(ServiceOptions(data=tmp_path, durability="os"))
    assert isinstance(store, SqliteStore)
    assert (store.path, store.durability) == (tmp_path / "conveyor.db", "os")
    store = service_store(ServiceOptions(data=tmp_path, durability="memory"))
    assert isinstance(store, SqliteStore) and store.path is None


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "PostgreSQL"])
def test_a_postgres_url_opens_the_shared_store(scheme: str) -> None:
    store = open_store(f"{scheme}://u@db/conveyor?schema=orders", "os")
    assert isinstance(store, PostgresStore) and store.options.schema == "orders"


BAD = [
    ("bogus://x", "unsupported store URL (bogus://...)"),
    ("no-scheme-at-all", "unsupported store URL (no scheme://)"),
    ("sqlite://app.db", "bad sqlite URL"),
    ("sqlite:///", "bad sqlite URL"),
    ("sqlite:///a.db?durability=memory", "durability of a sqlite URL is fsync or os"),
    ("postgresql://u@db/x?schema=Not-A-Schema", "bad schema 'Not-A-Schema'"),
    ("postgresql://u@db/x?pool_max=many", "pool_max is an integer"),
]


@pytest.mark.parametrize(("url", "words"), BAD)
def test_serve_migrate_and_the_client_refuse_a_bad_url_alike(
    url: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(InvalidArgument) as direct:
        open_store(url)
    assert words in direct.value.message
    with pytest.raises(InvalidArgument) as served:
        service_store(ServiceOptions(store_url=url))
    assert served.value.message == direct.value.message
    if url.partition("://")[0] in ("sqlite", "postgresql"):  # the client's store schemes
        with pytest.raises(InvalidArgument) as embedded:
            open_transport(url)
        assert embedded.value.message == direct.value.message
    assert cli_main(["migrate", "--store", url]) == 1
    assert capsys.readouterr().err == f"error: invalid_argument: {direct.value.message}\n"


def test_a_refused_url_keeps_its_password_to_itself() -> None:
    for url in ("mysql://app:s3cret@db/x", "sqlite://:s3cret@db/x"):
        with pytest.raises(InvalidArgument) as refused:
            open_store(url)
        assert "s3cret" not in refused.value.message


def test_serve_with_memory_durability_takes_no_file() -> None:
    with pytest.raises(InvalidArgument, match="durability 'memory' goes with no path"):
        service_store(ServiceOptions(store_url="sqlite:///a.db", durability="memory"))
