"""The ``conveyor`` commands that talk to a broker: send, receive, queues,
stats, dlq, purge, create, configure.

Each takes ``--url``, ``--token`` and ``--timeout`` (seconds to reach the
broker, 1 by default: a broker that is not there is said so at once). An
error is one line on stderr and exit status 1: ``error: CODE: message`` for
what the broker refused (the code is the one a program catches), ``error:
message`` for a broker that could not be reached (the message names the
address and what to check).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from conveyor.core.errors import BodyTooLarge, ConveyorError, InvalidArgument, QueueExists
from conveyor.core.types import QUEUE_SETTINGS, Message
from conveyor.core.wire import DEFAULT_MAX_FRAME

Command = Callable[[Any, argparse.Namespace], Awaitable[int]]
Subparsers = Any  # argparse's _SubParsersAction is private

# A body read from standard input or a file is read up to the largest frame
# the protocol carries; the broker's own limit (1 MiB by default) is checked
# by the broker.
MAX_READ_BODY = DEFAULT_MAX_FRAME
BODY_PREVIEW = 40  # characters of a body shown in the dead letters' table

TOKEN_HINT = "give the broker's token: --token, $CONVEYOR_TOKEN, or conveyor://:TOKEN@host:port"


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def error_line(exc: ConveyorError) -> str:
    """How the CLI reports an error: one line."""
    from conveyor.client.native import ConnectionLost

    if isinstance(exc, ConnectionLost) or exc.code == ConveyorError.code:
        return f"error: {exc.message}"
    line = f"error: {exc.code}: {exc.message}"
    if exc.code == "unauthorized":
        line += f" ({TOKEN_HINT})"
    return line


def client_command(fn: Command) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from conveyor.client.aio import AsyncClient

        async def main() -> int:
            client = AsyncClient(
                args.url, name="conveyor-cli", connect_timeout=args.timeout, token=args.token
            )
            async with client:
                return await fn(client, args)

        try:
            if args.command == "send":  # before connecting: a bad file needs no broker
                args.body = read_body(args.body)
            return asyncio.run(main())
        except ConveyorError as exc:
            print(error_line(exc), file=sys.stderr)
            return 1
        except OSError as exc:  # e.g. a TLS certificate (?ca=) that cannot be read
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


# -- the commands -------------------------------------------------------------------


def read_body(text: str) -> str | bytes:
    """The body a ``send`` argument names: ``-`` standard input, ``@FILE`` a
    file's bytes, anything else itself."""
    if text == "-":
        data, source = sys.stdin.buffer.read(MAX_READ_BODY + 1), "standard input"
    elif text.startswith("@"):
        source = text[1:]
        try:
            with open(source, "rb") as f:
                data = f.read(MAX_READ_BODY + 1)
        except OSError as exc:
            raise InvalidArgument(f"cannot read the body from {source}: {exc.strerror}") from None
    else:
        return text
    if len(data) > MAX_READ_BODY:
        raise BodyTooLarge(f"the body from {source} is over {MAX_READ_BODY} bytes")
    return data


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
    table(rows)
    if len(rows) == 1:
        print("(no queues)", file=sys.stderr)
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
        table(rows)
        if not args.watch:
            return 0
        await asyncio.sleep(args.interval)


async def _dlq(client: Any, args: argparse.Namespace) -> int:
    if args.action == "redrive":
        print(f"redriven: {await client.redrive(args.queue)}")
        return 0
    dead: list[Message] = await client.dead_letters(args.queue, limit=args.limit)
    if args.json:
        for m in dead:
            print(json.dumps(dead_letter_record(m)))
    elif dead:
        rows = [("ID", "ATTEMPTS", "DEAD AT", "BODY", "REASON")]
        rows += [
            (
                m.id,
                str(m.attempts),
                "-" if m.dead_at is None else time.strftime("%Y-%m-%dT%H:%M:%S",
                                                            time.localtime(m.dead_at)),
                body_preview(m.body),
                dead_reason_line(m),
            )
            for m in dead
        ]  # fmt: skip
        table(rows, right=(1,))
    if not dead:
        print(f"(no dead letters in {args.queue})", file=sys.stderr)
    return 0


def dead_letter_record(m: Message) -> dict[str, Any]:
    return {
        "id": m.id,
        "attempts": m.attempts,
        "max_attempts": m.max_attempts,
        "dead_at": m.dead_at,
        "reason": m.dead_reason,
        "error": m.last_error,
        "group": m.group,
        "headers": m.headers,
        "body": bytes(m.body).decode(errors="replace"),
    }


def dead_reason_line(m: Message) -> str:
    """Why a message is dead, in one line: the exception a task's traceback
    ends with, or the broker's reason and the last error it kept."""
    from conveyor.worker.tracebacks import exception_line, is_traceback

    reason = m.dead_reason or ""
    if is_traceback(reason) or not m.last_error:
        return exception_line(reason) or "-"
    return f"{exception_line(reason)}: {exception_line(m.last_error)}"


def body_preview(body: bytes) -> str:
    try:
        text = bytes(body).decode()
    except UnicodeDecodeError:
        return f"<{len(body)} bytes>"
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)  # "\n" for a newline
    return text if len(text) <= BODY_PREVIEW else text[: BODY_PREVIEW - 3] + "..."


async def _purge(client: Any, args: argparse.Namespace) -> int:
    print(f"purged: {await client.purge(args.queue)}")
    return 0


def queue_settings(pairs: Sequence[str]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            if not sep or not key:
                raise ValueError("KEY=JSON expected")
            settings[key] = json.loads(value)
        except ValueError as exc:
            raise InvalidArgument(
                f"--set {pair!r}: {exc} (KEY=JSON, e.g. max_attempts=3)"
            ) from None
    return settings


async def _create(client: Any, args: argparse.Namespace) -> int:
    pairs = args.set or []
    try:
        config = await client.create_queue(args.queue, **queue_settings(pairs))
    except QueueExists:
        sets = " ".join(f"--set {pair}" for pair in pairs)
        raise QueueExists(
            f"queue {args.queue!r} exists with other settings; to change them:"
            f" conveyor configure {args.queue} {sets}"
        ) from None
    print(json.dumps({f: getattr(config, f) for f in config.__struct_fields__}))
    return 0


async def _configure(client: Any, args: argparse.Namespace) -> int:
    config = await client.configure_queue(args.queue, **queue_settings(args.set))
    print(json.dumps({f: getattr(config, f) for f in config.__struct_fields__}))
    return 0


def table(rows: Sequence[tuple[str, ...]], right: tuple[int, ...] | None = None) -> None:
    """Columns padded to their widest cell: the first and text columns
    aligned left, the others (numbers) right, unless ``right`` names them."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = []
        for i, (cell, w) in enumerate(zip(row, widths, strict=True)):
            at_right = i in right if right is not None else i > 0
            cells.append(cell.rjust(w) if at_right else cell.ljust(w))
        print("  ".join(cells).rstrip())


# -- their parsers ------------------------------------------------------------------


SETTINGS_HELP = (
    "a queue setting, KEY=JSON; may be repeated. Settings: "
    + ", ".join(QUEUE_SETTINGS)
    + " (docs/semantics.md)"
)
CREATE_SETTINGS_HELP = SETTINGS_HELP + " (default: the defaults of every setting)"


def add_client_parsers(sub: Subparsers) -> None:
    def command(name: str, summary: str, description: str, fn: Command) -> argparse.ArgumentParser:
        c: argparse.ArgumentParser = sub.add_parser(name, help=summary, description=description)
        add_connection_options(c)
        c.set_defaults(func=client_command(fn))
        return c

    c = command(
        "send",
        "enqueue one message",
        "Enqueue one message and print its id once the broker has stored it.",
        _send,
    )
    c.add_argument("queue")
    c.add_argument(
        "body",
        help="the body: text as given, - to read it from standard input, @FILE to read a file",
    )
    c.add_argument("--priority", type=int, default=0, help="0 to 9, higher first (default 0)")
    c.add_argument(
        "--delay",
        type=float,
        default=None,
        help="seconds before it may be delivered (default: none, deliverable at once)",
    )
    c.add_argument(
        "--group",
        default=None,
        help="messages of one group are delivered in order, one at a time (default: none)",
    )
    c.add_argument(
        "--dedup-key",
        default=None,
        help="an enqueue with a key seen within the queue's dedup window adds nothing"
        " (default: none)",
    )

    c = command(
        "receive",
        "lease messages and print them",
        "Lease messages and print each as a JSON line (id, attempts, token, body)."
        " Without --ack their leases end when the command exits, and they are delivered again.",
        _receive,
    )
    c.add_argument("queue")
    c.add_argument("--max", type=int, default=1, help="messages to lease at most (default 1)")
    c.add_argument(
        "--wait",
        type=float,
        default=0.0,
        help="seconds to wait for a first message (default 0: answer at once)",
    )
    c.add_argument("--ack", action="store_true", help="acknowledge what was received")

    command(
        "queues",
        "list queues with their depths",
        "List the queues with their messages by state, consumers and the oldest ready age.",
        _queues,
    )

    c = command(
        "stats",
        "queue statistics",
        "Counts and totals of one queue, or of every queue; with --watch, rates too.",
        _stats,
    )
    c.add_argument("queue", nargs="?", help="one queue (default: every queue)")
    c.add_argument("--watch", action="store_true", help="refresh until interrupted")
    c.add_argument(
        "--interval",
        type=positive_seconds,
        default=1.0,
        help="seconds between refreshes with --watch (default 1)",
    )

    c = command(
        "dlq",
        "dead letters: list or redrive",
        "List a queue's dead letters (a table; --json for the full records) or put them"
        " back (redrive).",
        _dlq,
    )
    c.add_argument("action", choices=("list", "redrive"))
    c.add_argument("queue")
    c.add_argument(
        "--limit", type=int, default=100, help="dead letters to list at most (default 100)"
    )
    c.add_argument(
        "--json", action="store_true", help="print each dead letter as a JSON line, in full"
    )

    c = command(
        "purge",
        "remove a queue's waiting messages",
        "Remove every ready and scheduled message of a queue; leased ones stay.",
        _purge,
    )
    c.add_argument("queue")

    c = command(
        "create",
        "create a queue",
        "Create a queue (nothing happens if it exists with the same settings) and print its"
        " settings; `conveyor configure` changes them.",
        _create,
    )
    c.add_argument("queue")
    c.add_argument("--set", action="append", metavar="KEY=JSON", help=CREATE_SETTINGS_HELP)

    c = command(
        "configure",
        "change a queue's settings",
        "Change settings of an existing queue and print all of them.",
        _configure,
    )
    c.add_argument("queue")
    c.add_argument("--set", action="append", metavar="KEY=JSON", required=True, help=SETTINGS_HELP)


def add_connection_options(c: argparse.ArgumentParser) -> None:
    c.add_argument(
        "--url",
        default=None,
        help="broker URL (default: $CONVEYOR_URL, else conveyor://127.0.0.1:7710)",
    )
    c.add_argument(
        "--token",
        default=None,
        help="the broker's auth token (default: the URL's, else $CONVEYOR_TOKEN, else none)",
    )
    c.add_argument(
        "--timeout",
        type=positive_seconds,
        default=1.0,
        help="seconds to reach the broker (default 1)",
    )
