"""The kitchen of ``conveyor demo``: the task app its shop workers run.

Each shop is a ``conveyor worker conveyor.demo.app:app`` process. The
demo tells it, through its environment, which shop it is
(``CONVEYOR_DEMO_SHOP``) and where to keep its records
(``CONVEYOR_DEMO_DIR``). Every bake appends JSON lines to
``shop-<n>.jsonl`` there: ``start`` when the oven is loaded, ``done`` when the
pizza comes out (or ``abandoned`` if the shop lost its lease meanwhile).
Each line is one ``write`` on a file opened for appending, so a shop killed
with SIGKILL leaves every line it wrote whole, and the demo's audit reads
what really happened from these files and from the results the broker keeps,
never from counters of its own.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from conveyor.worker.app import App, Task
from conveyor.worker.context import TaskContext, current_task

QUEUE = "orders"
TASK_NAME = "demo.prepare"
DIR_ENV = "CONVEYOR_DEMO_DIR"
SHOP_ENV = "CONVEYOR_DEMO_SHOP"

# The worker's --url (or $CONVEYOR_URL) names the broker.
app = App(os.environ.get("CONVEYOR_URL"))

_lock = threading.Lock()
_fd: int | None = None


def records_path(directory: Path, shop: int) -> Path:
    return directory / f"shop-{shop}.jsonl"


def _shop() -> int:
    return int(os.environ.get(SHOP_ENV, "0"))


def _record(event: str, order: dict[str, Any], ctx: TaskContext, **extra: Any) -> float:
    """Append one record line; the time it was written."""
    global _fd  # noqa: PLW0603 - one append-only file per process, opened on first use
    now = time.time()
    line = {
        "event": event,
        "order": order["id"],
        "shop": _shop(),
        "pid": os.getpid(),
        "message": ctx.id,
        "attempt": ctx.attempt,
        "token": ctx.token,
        "t": now,
        **extra,
    }
    data = (json.dumps(line, separators=(",", ":")) + "\n").encode()
    with _lock:
        if _fd is None:
            directory = Path(os.environ.get(DIR_ENV, "."))
            _fd = os.open(
                records_path(directory, _shop()), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
            )
        os.write(_fd, data)
    return now


def _prepare(order: dict[str, Any]) -> dict[str, Any]:
    """Bake a pizza (or pour a drink): takes ``order["seconds"]``."""
    ctx = current_task()
    started = _record("start", order, ctx, seconds=order["seconds"])
    end = time.monotonic() + float(order["seconds"])
    while (left := end - time.monotonic()) > 0:
        if ctx.lease_lost:
            # Another shop has, or will get, this order: stop and say so. The
            # runtime discards this run's outcome anyway.
            _record("abandoned", order, ctx)
            return {"abandoned": True}
        time.sleep(min(left, 0.05))
    finished = _record("done", order, ctx)
    return {
        "order": order["id"],
        "shop": _shop(),
        "pid": os.getpid(),
        "attempt": ctx.attempt,
        "token": ctx.token,
        "started": started,
        "finished": finished,
    }


prepare: Task[[dict[str, Any]], dict[str, Any]] = app.task(
    _prepare, name=TASK_NAME, queue=QUEUE, max_attempts=5
)
