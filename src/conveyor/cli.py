"""The ``conveyor`` command: run a broker or a worker; the commands that
look at or poke a broker's queues are in cli_commands.py."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from conveyor.cli_commands import Subparsers, add_client_parsers, positive_seconds
from conveyor.core import eventloop
from conveyor.core.errors import ConveyorError, InvalidArgument
from conveyor.core.version import VERSION

log = logging.getLogger("conveyor")


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (+ error)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


# -- serve ----------------------------------------------------------------------


def serve_token(args: argparse.Namespace) -> tuple[str | None, str]:
    """The token ``serve`` requires, and where it came from: --token,
    --token-file, else $CONVEYOR_TOKEN (empty: unset)."""
    from conveyor.server.service import read_token_file

    if args.token is not None:
        if args.token_file is not None:
            raise InvalidArgument("--token and --token-file: give one of them")
        if not args.token:
            raise InvalidArgument("--token is empty")
        return args.token, "--token"
    if args.token_file is not None:
        return read_token_file(args.token_file), f"--token-file {args.token_file}"
    token = os.environ.get("CONVEYOR_TOKEN")
    return (token, "CONVEYOR_TOKEN") if token else (None, "")


def cmd_serve(args: argparse.Namespace) -> int:
    from conveyor.server.service import Service, ServiceOptions

    setup_logging(args.log_level, args.log_format)
    if args.session_timeout < 2 * args.heartbeat:
        log.error(
            "--session-timeout (%gs) must be at least twice --heartbeat (%gs)",
            args.session_timeout,
            args.heartbeat,
        )
        return 2
    try:
        token, token_source = serve_token(args)
    except ConveyorError as exc:
        log.error("%s", exc.message)
        return 2
    options = ServiceOptions(
        data=Path(args.data),
        store_url=args.store,
        host=args.host,
        port=args.port,
        http_port=None if args.http_port < 0 else args.http_port,
        durability=args.durability,
        token=token,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        heartbeat=args.heartbeat,
        session_timeout=args.session_timeout,
        token_source=token_source,
        insecure=args.insecure,
        max_connections=args.max_connections,
        handshake_timeout=args.handshake_timeout,
        max_connection_bytes=args.max_connection_mib << 20,
        max_total_bytes=args.max_total_mib << 20,
    )

    async def main() -> None:
        service = Service(options)
        await service.start()
        await service.run_until_stopped()

    try:
        eventloop.run(main())
    except ConveyorError as exc:
        log.error("%s", exc.message)
        return 2
    except OSError as exc:
        log.error("cannot serve: %s", exc)
        return 2
    return 0


# -- worker -------------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    from conveyor.worker.runtime import check_layout, run_worker

    setup_logging(args.log_level, args.log_format)
    queues = [q for q in (args.queues or "").split(",") if q] or None
    try:
        check_layout(args.concurrency, args.prefetch)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    if args.token is not None:
        # Through the environment, the token reaches every client of the
        # process: the worker's, and those its tasks make (task.delay), in the
        # process pool's children too.
        os.environ["CONVEYOR_TOKEN"] = args.token
    try:
        run_worker(
            args.app,
            queues=queues,
            concurrency=args.concurrency,
            prefetch=args.prefetch,
            pool=args.pool,
            grace=args.grace,
            url=args.url,
        )
    except ConveyorError as exc:
        log.error("%s", exc.message)
        return 2
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from conveyor.demo.run import main as run_demo

    return run_demo(args.orders, args.shops, not args.no_live, args.seed)


# -- migrate ------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    """Bring a store's schema to this version of Conveyor (brokers also do it
    at start, unless a PostgreSQL URL says migrate=false)."""
    url: str = args.store

    async def main() -> str:
        from conveyor.store.urls import open_store

        store = open_store(url)
        if store.capabilities.name == "postgres":  # migrate, and say what was applied
            from conveyor.store.postgres.migrate import migrate_url

            schema, applied = await migrate_url(url)
            done = ", ".join(map(str, applied)) if applied else "none: up to date"
            return f"schema {schema}: migrations applied: {done}"
        await store.open()  # SQLite migrates when it opens
        await store.close()
        return "migrated (SQLite migrates at open)"

    try:
        print(asyncio.run(main()))
    except ConveyorError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except ImportError as exc:
        print(f"error: {exc}: pip install 'conveyor-queue[postgres]'", file=sys.stderr)
        return 1
    return 0


# -- the parser ----------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="conveyor",
        description="A durable message and task queue. `conveyor COMMAND --help` tells more.",
    )
    p.add_argument("--version", action="version", version=f"conveyor {VERSION}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _serve_parser(sub)
    _worker_parser(sub)
    _demo_parser(sub)
    _migrate_parser(sub)
    add_client_parsers(sub)
    return p


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _serve_parser(sub: Subparsers) -> None:
    s = sub.add_parser(
        "serve",
        help="run a broker",
        description="Run a broker: the native protocol and the HTTP API over one store."
        " On an address other than loopback it requires a token (docs/security.md).",
    )
    s.add_argument(
        "--data",
        default="conveyor-data",
        help="directory of the embedded SQLite store (default conveyor-data)",
    )
    s.add_argument(
        "--store",
        default=None,
        help="store URL instead of --data: sqlite:///file.db, memory://, or"
        " postgresql://user@host/db?schema=NAME (several nodes may share one)"
        " (default: none, the SQLite store in --data)",
    )
    s.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; another than loopback needs a token"
        " or --insecure)",
    )
    s.add_argument(
        "--port", type=int, default=7710, help="native protocol port (default 7710; 0: any free)"
    )
    s.add_argument(
        "--http-port",
        type=int,
        default=7711,
        help="HTTP API port (default 7711; 0: any free, -1: no HTTP API)",
    )
    s.add_argument(
        "--durability",
        choices=("fsync", "os", "memory"),
        default="fsync",
        help="what a reply survives: fsync power loss, os a killed broker, memory nothing"
        " (default fsync)",
    )
    s.add_argument(
        "--heartbeat",
        type=positive_seconds,
        default=2.0,
        help="seconds between heartbeats (default 2)",
    )
    s.add_argument(
        "--session-timeout",
        type=positive_seconds,
        default=10.0,
        help="seconds a consumer may stay silent before its leases are released (default 10)",
    )
    s.add_argument(
        "--token",
        default=None,
        help="require this auth token from clients (default: $CONVEYOR_TOKEN, else none);"
        " ps shows it: --token-file or $CONVEYOR_TOKEN do not",
    )
    s.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help="read the token from this file, one line (default: none)",
    )
    s.add_argument(
        "--insecure",
        action="store_true",
        help="serve without a token on an address other than loopback",
    )
    s.add_argument(
        "--tls-cert",
        type=Path,
        default=None,
        help="TLS certificate (PEM) of both ports, with --tls-key (default: no TLS)",
    )
    s.add_argument(
        "--tls-key", type=Path, default=None, help="private key (PEM) of --tls-cert (default: none)"
    )
    s.add_argument(
        "--max-connections",
        type=_at_least_one,
        default=4096,
        help="connections accepted at once; one more gets too_many_connections (default 4096)",
    )
    s.add_argument(
        "--handshake-timeout",
        type=positive_seconds,
        default=10.0,
        help="seconds a new connection has to say hello before it is closed (default 10)",
    )
    s.add_argument(
        "--max-connection-mib",
        type=_at_least_one,
        default=32,
        help="MiB of requests, and of replies, one connection may make the server hold"
        " (default 32)",
    )
    s.add_argument(
        "--max-total-mib",
        type=_at_least_one,
        default=256,
        help="MiB of requests, and of replies, all connections together (default 256)",
    )
    s.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="(default info)",
    )
    s.add_argument("--log-format", default="text", choices=("text", "json"), help="(default text)")
    s.set_defaults(func=cmd_serve)


def _worker_parser(sub: Subparsers) -> None:
    w = sub.add_parser(
        "worker",
        help="run tasks of an app",
        description="Run the tasks of a conveyor.App: receive their messages, run them, and"
        " settle each (acknowledged, retried after a backoff, or dead-lettered). A broker"
        " that is not there yet, or goes away, is waited for.",
    )
    w.add_argument(
        "app",
        help="the app: module:attribute (tasks:app), or module alone for its attribute `app`;"
        " the module is imported from the current directory or PYTHONPATH",
    )
    w.add_argument(
        "--queues", default=None, help="comma-separated queues (default: the app's tasks' queues)"
    )
    w.add_argument("--concurrency", type=int, default=4, help="tasks run at once (default 4)")
    w.add_argument(
        "--prefetch",
        type=int,
        default=None,
        help="messages held at once, running or waiting to start (default: the concurrency)",
    )
    w.add_argument(
        "--pool",
        choices=("threads", "processes", "async"),
        default="threads",
        help="where tasks run (default threads)",
    )
    w.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="seconds running tasks get to finish on SIGTERM (default 30)",
    )
    w.add_argument(
        "--url",
        default=None,
        help="broker URL (default: the app's, $CONVEYOR_URL, conveyor://127.0.0.1:7710)",
    )
    w.add_argument(
        "--token",
        default=None,
        help="the broker's auth token, for the worker and the clients its tasks make;"
        " a token in the URL comes first (default: $CONVEYOR_TOKEN, else none)",
    )
    w.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="(default info)",
    )
    w.add_argument("--log-format", default="text", choices=("text", "json"), help="(default text)")
    w.set_defaults(func=cmd_worker)


def _demo_parser(sub: Subparsers) -> None:
    d = sub.add_parser(
        "demo",
        help="the pizza shop: shops bake orders, one dies, none are lost",
        description="A broker and shop workers in child processes; customers place orders;"
        " the last shop is killed with SIGKILL mid-bake; an audit of what the shops recorded"
        " and the broker kept ends it (exit 0 only if it passes).",
    )
    d.add_argument(
        "--orders",
        type=int,
        default=150,
        help="orders to place, at least 20 (default 150: about 30 s)",
    )
    d.add_argument("--shops", type=int, default=3, help="shop workers, at least 2 (default 3)")
    d.add_argument("--no-live", action="store_true", help="plain progress lines, no live view")
    d.add_argument(
        "--seed",
        type=int,
        default=None,
        help="place the same orders as another run (default: new orders each run)",
    )
    d.set_defaults(func=cmd_demo)


def _migrate_parser(sub: Subparsers) -> None:
    m = sub.add_parser(
        "migrate",
        help="create or upgrade a store's schema",
        description="Bring a store's schema to this version of Conveyor (a broker also does"
        " it when it starts, unless a PostgreSQL URL says migrate=false).",
    )
    m.add_argument(
        "--store",
        required=True,
        help="store URL: postgresql://user@host/db?schema=conveyor, or sqlite:///file.db",
    )
    m.set_defaults(func=cmd_migrate)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
