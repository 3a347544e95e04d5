"""A task that raises is visible in the worker's log at its default level
(INFO): each failed attempt that will be retried is a WARNING (task, id,
attempt n of m, the exception, when it runs again), the dead-lettering an
ERROR with the traceback; ``TaskFailed`` names the remote exception. Real
``conveyor worker`` processes (started as ``conveyor worker tasks_app``,
the module alone), their log read back."""

from __future__ import annotations

import re

import pytest
from worker_harness import StartWorker, TasksModule, WorkerProcess, wait_until

import conveyor

TASKS = """
app = conveyor.App()


@app.task(queue="oven", max_attempts=3, backoff=0.05)
def bake(pizza):
    raise ValueError(f"no dough for {pizza}")


@app.task(queue="oven", max_attempts=3, retry_on=(OSError,))
def slice_it(pizza):
    raise KeyError(pizza)


@app.task(queue="oven", max_attempts=3)
def box(pizza):
    if conveyor.current_task().attempt == 1:
        raise conveyor.Retry(delay=0.05)
    return f"{pizza} boxed"


@app.task(queue="oven")
def serve_it(pizza):
    return f"{pizza} served"
"""

# "2026-11-24 10:02:03,123 WARNING conveyor.worker: message" and the lines
# under it (a traceback), up to the next record.
RECORD = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+) (?P<logger>\S+): (?P<message>.*)$")


def records(log: str) -> list[tuple[str, str, list[str]]]:
    """(level, first line of the message, the lines under it)."""
    found: list[tuple[str, str, list[str]]] = []
    for line in log.splitlines():
        match = RECORD.match(line)
        if match:
            found.append((match["level"], match["message"], []))
        elif found:
            found[-1][2].append(line)
    return found


def about(worker: WorkerProcess, message_id: str) -> list[tuple[str, str, list[str]]]:
    return [r for r in records(worker.log()) if message_id in r[1]]


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_failed_attempts_are_warnings_and_the_dead_letter_an_error(
    tasks_module: TasksModule, start_worker: StartWorker, pool: str
) -> None:
    tasks = tasks_module(TASKS)
    worker = start_worker(["oven"], pool=pool, app_path="tasks_app")
    handle = tasks.bake.delay("margherita")
    with pytest.raises(conveyor.TaskFailed) as failed:
        handle.result(timeout=60)
    assert str(failed.value) == (
        f"tasks_app.bake ({handle.id}) failed: ValueError: no dough for margherita"
    )
    assert failed.value.remote_traceback.rstrip().endswith("ValueError: no dough for margherita")

    logged = wait_until(lambda: len(about(worker, handle.id)) == 3 and about(worker, handle.id),
                        30, "three records of the task")  # fmt: skip
    run = f"task tasks_app.bake {handle.id}"
    assert [(level, message) for level, message, _ in logged] == [
        ("WARNING", f"{run} attempt 1 of 3 failed: ValueError: no dough for margherita;"
                    " again in 0.05s"),
        ("WARNING", f"{run} attempt 2 of 3 failed: ValueError: no dough for margherita;"
                    " again in 0.05s"),
        ("ERROR", f"{run} attempt 3 of 3 failed: ValueError: no dough for margherita;"
                  " dead-lettered (its last attempt)"),
    ]  # fmt: skip
    traceback = logged[2][2]
    assert traceback[0] == "Traceback (most recent call last):"
    assert '    raise ValueError(f"no dough for {pizza}")' in traceback
    assert traceback[-1] == "ValueError: no dough for margherita"


def test_an_exception_outside_retry_on_is_dead_lettered_at_once(
    tasks_module: TasksModule, start_worker: StartWorker
) -> None:
    tasks = tasks_module(TASKS)
    worker = start_worker(["oven"], app_path="tasks_app")
    handle = tasks.slice_it.delay("quattro")
    with pytest.raises(conveyor.TaskFailed) as failed:
        handle.result(timeout=60)
    assert str(failed.value) == f"tasks_app.slice_it ({handle.id}) failed: KeyError: 'quattro'"
    ((level, message, traceback),) = wait_until(lambda: about(worker, handle.id), 30, "a record")
    assert (level, message) == (
        "ERROR",
        f"task tasks_app.slice_it {handle.id} attempt 1 of 3 failed: KeyError: 'quattro';"
        " dead-lettered (not retried: not in the task's retry_on)",
    )
    assert traceback[-1] == "KeyError: 'quattro'"


def test_a_retry_asked_for_is_info_and_success_is_quiet(
    tasks_module: TasksModule, start_worker: StartWorker
) -> None:
    tasks = tasks_module(TASKS)
    worker = start_worker(["oven"], app_path="tasks_app")
    boxed = tasks.box.delay("diavola")
    served = tasks.serve_it.delay("marinara")
    assert boxed.result(timeout=60) == "diavola boxed"
    assert served.result(timeout=60) == "marinara served"
    ((level, message, _),) = wait_until(lambda: about(worker, boxed.id), 30, "a record")
    assert (level, message) == (
        "INFO",
        f"task tasks_app.box {boxed.id} attempt 1 of 3 asked for a retry (retry requested);"
        " again in 0.05s",
    )
    assert about(worker, served.id) == []
    assert [r for r in records(worker.log()) if r[0] in ("WARNING", "ERROR")] == []
