"""``str(TaskFailed)`` names the remote exception (type and message), read
from the end of the traceback the worker kept; the traceback stays on
``remote_traceback``. And the line ``conveyor dlq list`` shows."""

from __future__ import annotations

import time
import traceback

import pytest

import conveyor
from conveyor.core.types import Result, ResultStatus
from conveyor.worker.tracebacks import exception_line


def raised(fn: object) -> str:
    try:
        fn()  # type: ignore[operator]
    except Exception:
        return traceback.format_exc()
    raise AssertionError("did not raise")


def no_dough() -> None:
    raise ValueError("no dough for margherita")


def chained() -> None:
    try:
        no_dough()
    except ValueError as exc:
        raise KeyError("oven") from exc


def several_lines() -> None:
    raise RuntimeError("first line\n    indented second line\nthird")


def empty_message() -> None:
    raise TimeoutError


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (raised(no_dough), "ValueError: no dough for margherita"),
        (raised(chained), "KeyError: 'oven'"),
        (raised(several_lines), "RuntimeError: first line"),
        (raised(empty_message), "TimeoutError"),
        # cut to its tail, as the worker keeps it (runtime.MAX_REASON)
        (raised(no_dough)[raised(no_dough).rindex('  File "'):],
         "ValueError: no dough for margherita"),
        ("failed on all 3 attempts: " + raised(no_dough), "ValueError: no dough for margherita"),
        ("TimeLimitExceeded: ran past its time limit of 2s",
         "TimeLimitExceeded: ran past its time limit of 2s"),
        ("lease expired after 5 attempts", "lease expired after 5 attempts"),
        ("\n  given back\nby a worker", "given back"),
        ("", ""),
        (None, ""),
    ],
)  # fmt: skip
def test_the_line_that_names_the_exception(text: str | None, line: str) -> None:
    assert exception_line(text) == line


def test_str_of_task_failed_names_the_remote_exception() -> None:
    app = conveyor.App("memory://")  # never connected: the result is given here

    @app.task
    def bake(pizza: str) -> str:
        return pizza

    remote = raised(no_dough)
    handle = conveyor.TaskHandle(app, bake, "1a2b3c")
    dead = Result(
        id="1a2b3c", status=ResultStatus.DEAD, body=None, error=remote, finished_at=time.time()
    )
    with pytest.raises(conveyor.TaskFailed) as failed:
        handle._decode(dead)
    assert str(failed.value) == (
        f"{bake.name} (1a2b3c) failed: ValueError: no dough for margherita"
    )
    assert failed.value.remote_traceback == remote
    assert failed.value.code == "task_failed"

    silent = Result(
        id="1a2b3c", status=ResultStatus.DEAD, body=None, error=None, finished_at=time.time()
    )
    with pytest.raises(conveyor.TaskFailed, match=r"failed: no error recorded$"):
        handle._decode(silent)
