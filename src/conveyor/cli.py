"""The ``conveyor`` command: run a broker, and look at or poke its queues."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from conveyor.core import eventloop
from conveyor.core.errors import ConveyorError, InvalidArgument

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
    options = ServiceOptions(
        data=Path(args.data),
        store_url=args.store,
        host=args.host,
        port=args.port,
        http_port=None if args.http_port < 0 else args.http_port,
        durability=args.durability,
        token=args.token,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        heartbeat=args.heartbeat,
        session_timeout=args.session_timeout,
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
    from conveyor.worker.demo import main as run_demo

    return run_demo(args.orders, args.shops, not args.no_live, args.seed)


# -- migrate ------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    """Bring a store's schema to this version of Conveyor (brokers also do it
    at start, unless a PostgreSQL URL says migrate=false)."""
    url: str = args.store

    async def main() -> str:
        if url.startswith(("postgresql://", "postgres://")):
            from conveyor.store.postgres.migrate import migrate_url

            schema, applied = await migrate_url(url)
            done = ", ".join(map(str, applied)) if applied else "none: up to date"
            return f"schema {schema}: migrations applied: {done}"
        from conveyor.server.service import ServiceOptions, open_store

        store = open_store(ServiceOptions(store_url=url))
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


# -- client commands --------------------------------------------------------------


def _client_command(
    fn: Callable[[Any, argparse.Namespace], Awaitable[int]],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from conveyor.client.aio import AsyncClient

        async def main() -> int:
            async with AsyncClient(args.url, name="conveyor-cli", timeout=args.timeout) as client:
                return await fn(client, args)

        try:
            return asyncio.run(main())
        except ConveyorError as exc:
            print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
            return 1

    return run


async def _send(client: Any, args: argparse.Namespace) -> int:
    result = await client.enqueue(
        args.queue,
        args.body,
        priority=args.priority,
        delay=args.delay,
        group=args.group,
        dedup_key=args.dedup_key,
    )
    print(result.id + (" (duplicate)" if result.duplicate else ""))
    return 0


async def _receive(client: Any, args: argparse.Namespace) -> int:
    got = await client.receive(args.queue, max=args.max, wait=args.wait)
    for d in got:
        body = bytes(d.body).decode(errors="replace")
        print(json.dumps({"id": d.id, "attempts": d.attempts, "token": d.token, "body": body}))
        if args.ack:
            await d.ack()
    if not got:
        print("(no message)", file=sys.stderr)
    return 0


async def _queues(client: Any, args: argparse.Namespace) -> int:
    rows = [("QUEUE", "READY", "SCHEDULED", "LEASED", "DEAD", "CONSUMERS", "OLDEST")]
    for q in await client.queues():
        s = await client.stats(q.name)
        age = "-" if s.oldest_ready_age is None else f"{s.oldest_ready_age:.1f}s"
        rows.append(
            (
                q.name,
                str(s.ready),
                str(s.scheduled),
                str(s.leased),
                str(s.dead),
                str(s.consumers),
                age,
            )
        )
    _table(rows)
    return 0


async def _stats(client: Any, args: argparse.Namespace) -> int:
    names = [args.queue] if args.queue else [q.name for q in await client.queues()]
    previous: dict[str, Any] = {}
    while True:
        rows = [
            (
                "QUEUE",
                "READY",
                "SCHEDULED",
                "LEASED",
                "DEAD",
                "ENQUEUED/s",
                "ACKED/s",
                "ENQUEUED",
                "ACKED",
            )
        ]
        now = time.monotonic()
        for name in names:
            s = await client.stats(name)
            rate_in = rate_out = "-"
            if name in previous:
                t0, p = previous[name]
                dt = max(now - t0, 1e-6)
                rate_in = f"{(s.enqueued_total - p.enqueued_total) / dt:.0f}"
                rate_out = f"{(s.acked_total - p.acked_total) / dt:.0f}"
            previous[name] = (now, s)
            rows.append((name, str(s.ready), str(s.scheduled), str(s.leased), str(s.dead),
                         rate_in, rate_out, str(s.enqueued_total), str(s.acked_total)))  # fmt: skip
        if args.watch:
            print("\x1b[2J\x1b[H" + time.strftime("%H:%M:%S"), end="\n")
        _table(rows)
        if not args.watch:
            return 0
        await asyncio.sleep(args.interval)


async def _dlq(client: Any, args: argparse.Namespace) -> int:
    if args.action == "redrive":
        print(f"redriven: {await client.redrive(args.queue)}")
        return 0
    for m in await client.dead_letters(args.queue, limit=args.limit):
        body = bytes(m.body).decode(errors="replace")
        print(
            json.dumps(
                {
                    "id": m.id,
                    "attempts": m.attempts,
                    "reason": m.dead_reason,
                    "error": m.last_error,
                    "body": body,
                }
            )
        )
    return 0


async def _purge(client: Any, args: argparse.Namespace) -> int:
    print(f"purged: {await client.purge(args.queue)}")
    return 0


async def _create(client: Any, args: argparse.Namespace) -> int:
    settings: dict[str, Any] = {}
    for pair in args.set or []:
        key, sep, value = pair.partition("=")
        try:
            if not sep or not key:
                raise ValueError("KEY=JSON expected")
            settings[key] = json.loads(value)
        except ValueError as exc:
            raise InvalidArgument(
                f"--set {pair!r}: {exc} (KEY=JSON, e.g. max_attempts=3)"
            ) from None
    config = await client.create_queue(args.queue, **settings)
    print(json.dumps({f: getattr(config, f) for f in config.__struct_fields__}))
    return 0


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )


# -- the parser ----------------------------------------------------------------------


Subparsers = Any  # argparse's _SubParsersAction is private


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="conveyor", description="A durable message and task queue.")
    sub = p.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _worker_parser(sub)
    _demo_parser(sub)
    _migrate_parser(sub)
    _client_parsers(sub)
    return p


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _serve_parser(sub: Subparsers) -> None:
    s = sub.add_parser("serve", help="run a broker")
    s.add_argument("--data", default="conveyor-data", help="directory of the embedded SQLite store")
    s.add_argument(
        "--store",
        default=None,
        help="store URL instead of --data: sqlite:///file.db, memory://, or"
        " postgresql://user@host/db?schema=NAME (several nodes may share one)",
    )
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=7710, help="native protocol port (0: any free)")
    s.add_argument(
        "--http-port", type=int, default=7711, help="HTTP API port (0: any free, -1: no HTTP API)"
    )
    s.add_argument("--durability", choices=("fsync", "os", "memory"), default="fsync")
    s.add_argument(
        "--heartbeat", type=_positive, default=2.0, help="seconds between heartbeats (default 2)"
    )
    s.add_argument(
        "--session-timeout",
        type=_positive,
        default=10.0,
        help="seconds a consumer may stay silent before its leases are released (default 10)",
    )
    s.add_argument("--token", default=None, help="require this auth token from clients")
    s.add_argument("--tls-cert", type=Path, default=None)
    s.add_argument("--tls-key", type=Path, default=None)
    s.add_argument(
        "--max-connections",
        type=_at_least_one,
        default=4096,
        help="connections accepted at once; one more gets too_many_connections (default 4096)",
    )
    s.add_argument(
        "--handshake-timeout",
        type=_positive,
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
    s.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    s.add_argument("--log-format", default="text", choices=("text", "json"))
    s.set_defaults(func=cmd_serve)


def _worker_parser(sub: Subparsers) -> None:
    w = sub.add_parser("worker", help="run tasks of an app")
    w.add_argument("app", help="the app to import, module:attribute")
    w.add_argument(
        "--queues", default=None, help="comma-separated queues (default: the app's tasks' queues)"
    )
    w.add_argument("--concurrency", type=int, default=4, help="tasks run at once")
    w.add_argument(
        "--prefetch",
        type=int,
        default=None,
        help="messages held at once, running or waiting to start (default: the concurrency)",
    )
    w.add_argument("--pool", choices=("threads", "processes", "async"), default="threads")
    w.add_argument(
        "--grace", type=float, default=30.0, help="seconds running tasks get to finish on SIGTERM"
    )
    w.add_argument(
        "--url",
        default=None,
        help="broker URL (default: the app's, $CONVEYOR_URL, conveyor://127.0.0.1:7710)",
    )
    w.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    w.add_argument("--log-format", default="text", choices=("text", "json"))
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
    d.add_argument("--seed", type=int, default=None, help="place the same orders as another run")
    d.set_defaults(func=cmd_demo)


def _migrate_parser(sub: Subparsers) -> None:
    m = sub.add_parser("migrate", help="create or upgrade a store's schema")
    m.add_argument(
        "--store",
        required=True,
        help="store URL: postgresql://user@host/db?schema=conveyor, or sqlite:///file.db",
    )
    m.set_defaults(func=cmd_migrate)


def _client_parsers(sub: Subparsers) -> None:
    def client_parser(
        name: str, help_text: str, fn: Callable[[Any, argparse.Namespace], Awaitable[int]]
    ) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_text)
        c.add_argument(
            "--url",
            default=None,
            help="broker URL (default: $CONVEYOR_URL or conveyor://127.0.0.1:7710)",
        )
        c.add_argument("--timeout", type=float, default=10.0, help="seconds to reach the broker")
        c.set_defaults(func=_client_command(fn))
        parser: argparse.ArgumentParser = c
        return parser

    c = client_parser("send", "enqueue one message", _send)
    c.add_argument("queue")
    c.add_argument("body")
    c.add_argument("--priority", type=int, default=0)
    c.add_argument("--delay", type=float, default=None)
    c.add_argument("--group", default=None)
    c.add_argument("--dedup-key", default=None)

    c = client_parser("receive", "lease messages and print them", _receive)
    c.add_argument("queue")
    c.add_argument("--max", type=int, default=1)
    c.add_argument("--wait", type=float, default=0.0)
    c.add_argument("--ack", action="store_true", help="acknowledge what was received")

    client_parser("queues", "list queues with their depths", _queues)

    c = client_parser("stats", "queue statistics", _stats)
    c.add_argument("queue", nargs="?")
    c.add_argument("--watch", action="store_true", help="refresh until interrupted")
    c.add_argument("--interval", type=float, default=1.0)

    c = client_parser("dlq", "dead letters: list or redrive", _dlq)
    c.add_argument("action", choices=("list", "redrive"))
    c.add_argument("queue")
    c.add_argument("--limit", type=int, default=100)

    c = client_parser("purge", "remove a queue's waiting messages", _purge)
    c.add_argument("queue")

    c = client_parser("create", "create a queue", _create)
    c.add_argument("queue")
    c.add_argument(
        "--set", action="append", metavar="KEY=JSON", help="a queue setting, e.g. max_attempts=3"
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
