"""Where task code runs: threads, processes, or the worker's event loop.

Each pool runs one Execution and records its value or error. It enforces
the time limit (``ctx.deadline``) as far as its kind allows:
  threads    the caller stops waiting at the deadline; the thread finishes
             on its own, holding its slot, and its outcome is dropped
             (threads cannot be killed);
  processes  each task runs in one of ``size`` child processes; a child whose
             task overran its limit or lost its lease is killed and replaced;
  async      coroutine functions run on the loop and are cancelled at the
             deadline; plain functions run in a thread, as in ``threads``.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import pickle
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, Protocol

from conveyor.worker.context import TaskContext, reset_current, set_current
from conveyor.worker.middleware.base import Execution
from conveyor.worker.middleware.time_limits import TimeLimitExceeded


class Pool(Protocol):
    async def start(self) -> None: ...
    async def run(self, execution: Execution) -> None: ...
    def lease_lost(self, execution: Execution) -> None: ...
    async def close(self) -> None: ...


_Outcome = tuple[Any, BaseException | None, str]  # value, error, traceback


def _call(execution: Execution) -> _Outcome:
    """Run a sync task function here (a thread), with current_task() set."""
    token = set_current(execution.ctx)
    try:
        return execution.task.fn(*execution.args, **execution.kwargs), None, ""
    except BaseException as exc:
        return None, exc, traceback.format_exc()
    finally:
        reset_current(token)


async def _call_async(execution: Execution) -> _Outcome:
    token = set_current(execution.ctx)
    try:
        return await execution.task.fn(*execution.args, **execution.kwargs), None, ""
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return None, exc, traceback.format_exc()
    finally:
        reset_current(token)


def _remaining(ctx: TaskContext) -> float | None:
    return None if not ctx.deadline else max(0.0, ctx.deadline - time.monotonic())


def _timed_out(execution: Execution) -> None:
    limit = execution.task.timeout
    execution.error = TimeLimitExceeded(
        f"{execution.task.name} ran past its time limit of {limit}s"
    )
    execution.traceback = f"TimeLimitExceeded: ran past its time limit of {limit}s"


class ThreadPool:
    """``size`` daemon threads. A task's time limit counts from the moment a
    thread starts it, and a thread whose task overran keeps its slot until
    the task really returns, so the pool never runs more than ``size`` at
    once. Daemon threads do not hold the process open after shutdown's
    grace period (the broker releases what they held)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._jobs: queue.SimpleQueue[tuple[Execution, Callable[[_Outcome], None]] | None]
        self._jobs = queue.SimpleQueue()
        self._slots: asyncio.Semaphore | None = None
        self._started = False

    async def start(self) -> None:
        self._slots = asyncio.Semaphore(self.size)
        for n in range(self.size):
            threading.Thread(target=self._work, name=f"conveyor-task-{n}", daemon=True).start()
        self._started = True

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            execution, done = job
            done(_call(execution))

    async def run(self, execution: Execution) -> None:
        if execution.task.is_async:
            await _run_coroutine(execution)
            return
        if self._slots is None:
            raise RuntimeError("the pool is not started")
        slots = self._slots
        budget = _remaining(execution.ctx)
        await slots.acquire()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_Outcome] = loop.create_future()

        def finish(outcome: _Outcome) -> None:  # on the loop
            slots.release()
            if not future.done():
                future.set_result(outcome)

        def done(outcome: _Outcome) -> None:  # on the task's thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: we are exiting
                loop.call_soon_threadsafe(finish, outcome)

        if budget is not None:
            execution.ctx.deadline = time.monotonic() + budget
        self._jobs.put((execution, done))
        try:
            if budget is None:
                value, error, tb = await future
            else:  # on time-out the thread still runs: keep the future for finish()
                value, error, tb = await asyncio.wait_for(asyncio.shield(future), budget)
        except TimeoutError:
            _timed_out(execution)
            return
        execution.value, execution.error, execution.traceback = value, error, tb

    def lease_lost(self, execution: Execution) -> None:
        return None  # the task sees ctx.lease_lost; its outcome is dropped

    async def close(self) -> None:
        if self._started:
            for _ in range(self.size):
                self._jobs.put(None)  # each idle thread ends; busy ones when they return
            self._started = False


async def _run_coroutine(execution: Execution) -> None:
    try:
        value, error, tb = await asyncio.wait_for(_call_async(execution), _remaining(execution.ctx))
    except TimeoutError:
        _timed_out(execution)
        return
    execution.value, execution.error, execution.traceback = value, error, tb


class AsyncPool(ThreadPool):
    """Coroutines on the loop (at most ``size`` at once, by the runtime's
    prefetch); plain functions in threads."""


# -- processes -------------------------------------------------------------------


def _child_main(app_path: str, conn: multiprocessing.connection.Connection) -> None:
    """A process-pool child: import the app, then run tasks one at a time."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from conveyor.worker.runtime import load_app

    app = load_app(app_path)
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        name, args, kwargs, fields = request
        task = app.tasks[name]
        token = set_current(TaskContext(**fields))
        try:
            value = task.fn(*args, **kwargs)
            if asyncio.iscoroutine(value):
                value = asyncio.run(value)
            reply: tuple[Any, ...] = (True, value, None, "")
        except BaseException as exc:
            reply = (False, None, _portable(exc), traceback.format_exc())
        finally:
            reset_current(token)
        try:
            conn.send(reply)
        except Exception as exc:  # an unpicklable return value
            conn.send(
                (
                    False,
                    None,
                    RuntimeError(f"cannot send the result back: {exc!r}"),
                    traceback.format_exc(),
                )
            )


def _portable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


class _Child:
    def __init__(self, app_path: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(target=_child_main, args=(app_path, child_conn), daemon=True)
        self.process.start()
        child_conn.close()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.process.pid is not None:
                os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(5)
        self.conn.close()


class ProcessPool:
    def __init__(self, size: int, app_path: str) -> None:
        self.size = size
        self.app_path = app_path
        self._idle: asyncio.Queue[_Child] = asyncio.Queue()
        self._busy: dict[int, _Child] = {}  # id(execution) -> child
        self._all: set[_Child] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        children = await asyncio.gather(
            *(loop.run_in_executor(None, _Child, self.app_path) for _ in range(self.size))
        )
        for child in children:
            self._all.add(child)
            self._idle.put_nowait(child)

    async def run(self, execution: Execution) -> None:
        child = await self._idle.get()
        self._busy[id(execution)] = child
        loop = asyncio.get_running_loop()
        ctx = execution.ctx
        try:
            fields = {
                k: getattr(ctx, k)
                for k in ("id", "name", "queue", "attempt", "max_attempts", "token")
            }
            child.conn.send((execution.task.name, execution.args, execution.kwargs, fields))
            reply: asyncio.Future[None] = loop.create_future()

            def readable() -> None:
                if not reply.done():
                    reply.set_result(None)

            loop.add_reader(child.conn.fileno(), readable)
            try:
                await asyncio.wait_for(reply, _remaining(ctx))
            finally:
                loop.remove_reader(child.conn.fileno())
            ok, value, error, tb = child.conn.recv()
        except TimeoutError:
            _timed_out(execution)
            child = self._replace(child)
        except (EOFError, OSError) as exc:
            if ctx.lease_lost:
                execution.error, execution.traceback = exc, "stopped: lease lost"
            else:
                execution.error = RuntimeError(f"the task's process died: {exc!r}")
                execution.traceback = repr(execution.error)
            child = self._replace(child)
        else:
            execution.value, execution.error, execution.traceback = value, error, tb or ""
            if not ok and error is None:
                execution.error = RuntimeError(tb)
        finally:
            self._busy.pop(id(execution), None)
            self._idle.put_nowait(child)

    def lease_lost(self, execution: Execution) -> None:
        """Stop the task now: its lease is gone, another worker may run it."""
        child = self._busy.get(id(execution))
        if child is not None and child.process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.process.pid, signal.SIGKILL)

    def _replace(self, child: _Child) -> _Child:
        child.kill()
        self._all.discard(child)
        fresh = _Child(self.app_path)
        self._all.add(fresh)
        return fresh

    async def close(self) -> None:
        for child in list(self._all):
            child.kill()
        self._all.clear()


def make_pool(kind: str, size: int, app_path: str | None) -> Pool:
    if kind == "threads":
        return ThreadPool(size)
    if kind == "async":
        return AsyncPool(size)
    if kind == "processes":
        if app_path is None:
            raise ValueError("the process pool needs the app's import path (module:app)")
        return ProcessPool(size, app_path)
    raise ValueError(f"unknown pool {kind!r}: threads, processes or async")
