"""App and @app.task: functions that run as tasks on workers.

    app = conveyor.App("conveyor://127.0.0.1:7710")

    @app.task(queue="emails", max_attempts=5)
    def send_email(to: str) -> str: ...

    handle = send_email.delay("ada@example.com")
    handle.result(timeout=10)

A task message's body is ``{"args": [...], "kwargs": {...}}`` in the app's
serializer (JSON by default) and its header ``task`` names the function. The
value a task returns is stored as the ack's result; a task that fails for
good raises ``TaskFailed`` from ``result()``: its message names the remote
exception, its ``remote_traceback`` holds the traceback.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Generic, ParamSpec, TypedDict, TypeVar, Unpack, overload

from conveyor.client.aio import AsyncClient
from conveyor.client.sync import Client
from conveyor.core.errors import InvalidArgument, TaskFailed
from conveyor.core.types import EnqueueResult, NewMessage, Result, ResultStatus
from conveyor.worker.middleware.base import Middleware, default_middleware
from conveyor.worker.serializers import JsonSerializer, Serializer
from conveyor.worker.tracebacks import exception_line

P = ParamSpec("P")
R = TypeVar("R")
# What a task returns: covariant, so that a Task[[str], int] is a Task[..., object].
R_co = TypeVar("R_co", covariant=True)
T = TypeVar("T")
TASK_HEADER = "task"


class Retry(Exception):
    """Raise it in a task to be run again after ``delay`` seconds (None: the
    task's backoff). It counts as an attempt."""

    def __init__(self, delay: float | None = None, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.delay = delay


class TaskHandle(Generic[R_co]):
    """A task that was enqueued: its message id, and a way to its result."""

    def __init__(
        self, app: App, task: Task[..., R_co], message_id: str, duplicate: bool = False
    ) -> None:
        self.app = app
        self.task = task
        self.id = message_id
        self.duplicate = duplicate

    def result(self, timeout: float = 30.0) -> R_co:
        """Wait for the return value; TaskFailed if the task failed for good."""
        return self._decode(self.app.client().result(self.id, timeout=timeout))

    async def aresult(self, timeout: float = 30.0) -> R_co:
        """``result`` for async code."""
        return self._decode(await (await self.app.async_client()).result(self.id, timeout=timeout))

    def _decode(self, result: Result) -> R_co:
        if result.status == ResultStatus.OK:
            # The serializer gives back what the task returned, as it encoded it.
            value: R_co = self.app.serializer.loads(result.body) if result.body else None  # type: ignore[assignment]
            return value
        error = result.error or ""
        why = exception_line(error) or "no error recorded"
        raise TaskFailed(f"{self.task.name} ({self.id}) failed: {why}", error)

    def __repr__(self) -> str:
        return f"<TaskHandle {self.task.name} {self.id}>"


KeyFn = str | Callable[..., str | None] | None


class TaskOptions(TypedDict, total=False):
    """The keyword options of ``App.task`` (see its signature for defaults)."""

    name: str | None
    queue: str
    priority: int
    max_attempts: int | None
    timeout: float | None
    retry_on: tuple[type[BaseException], ...]
    backoff: float | Callable[[int], float] | None
    group: KeyFn
    dedup_key: KeyFn


class Task(Generic[P, R_co]):
    """A function registered with an App; call it as usual, or ``delay`` it."""

    def __init__(
        self,
        app: App,
        fn: Callable[P, R_co],
        *,
        name: str,
        queue: str,
        priority: int,
        max_attempts: int | None,
        timeout: float | None,
        retry_on: tuple[type[BaseException], ...],
        backoff: float | Callable[[int], float] | None,
        group: KeyFn,
        dedup_key: KeyFn,
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.queue = queue
        self.priority = priority
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.retry_on = retry_on
        self.backoff = backoff
        self.group = group
        self.dedup_key = dedup_key
        self.is_async = inspect.iscoroutinefunction(fn)
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.queue!r}>"

    def message(
        self,
        args: Sequence[object] = (),
        kwargs: Mapping[str, object] | None = None,
        *,
        priority: int | None = None,
        delay: float | None = None,
        group: str | None = None,
        dedup_key: str | None = None,
    ) -> NewMessage:
        """The message that runs this task with these arguments."""
        kwargs = dict(kwargs or {})
        body = self.app.serializer.dumps({"args": list(args), "kwargs": kwargs})
        headers = {TASK_HEADER: self.name, "content-type": self.app.serializer.content_type}
        message = NewMessage(
            body=body,
            priority=self.priority if priority is None else priority,
            delay=delay,
            group=group if group is not None else _key(self.group, args, kwargs),
            dedup_key=dedup_key if dedup_key is not None else _key(self.dedup_key, args, kwargs),
            headers=headers,
            max_attempts=self.max_attempts,
        )
        for middleware in self.app.middleware:
            changed = self.app.hook(middleware.before_enqueue, self, message)
            message = changed or message
        return message

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle[R_co]:
        """Enqueue a run with these arguments; returns once it is stored."""
        return self.enqueue(args, kwargs)

    def enqueue(
        self,
        args: Sequence[object] = (),
        kwargs: Mapping[str, object] | None = None,
        *,
        priority: int | None = None,
        delay: float | None = None,
        group: str | None = None,
        dedup_key: str | None = None,
    ) -> TaskHandle[R_co]:
        """``delay`` with the arguments as a sequence and a mapping, and the
        message's options (None: the task's)."""
        message = self.message(
            args, kwargs, priority=priority, delay=delay, group=group, dedup_key=dedup_key
        )
        client = self.app.client()
        self.app.ensure_queue_sync(client, self.queue)
        (result,) = client.enqueue_many(self.queue, [message])
        return self._handle(message, result)

    def delay_many(
        self, calls: Iterable[Sequence[object] | tuple[Sequence[object], Mapping[str, object]]]
    ) -> list[TaskHandle[R_co]]:
        """Enqueue many runs in one atomic round trip. Each item is a tuple of
        positional arguments, or an ``(args, kwargs)`` pair."""
        messages = [self.message(*_split_call(call)) for call in calls]
        if not messages:
            return []
        client = self.app.client()
        self.app.ensure_queue_sync(client, self.queue)
        results = client.enqueue_many(self.queue, messages)
        return [self._handle(m, r) for m, r in zip(messages, results, strict=True)]

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle[R_co]:
        """``delay`` for async code."""
        message = self.message(args, kwargs)
        client = await self.app.async_client()
        await self.app.ensure_queue(client, self.queue)
        (result,) = await client.enqueue_many(self.queue, [message])
        return self._handle(message, result)

    def _handle(self, message: NewMessage, result: EnqueueResult) -> TaskHandle[R_co]:
        for middleware in self.app.middleware:
            self.app.hook(middleware.after_enqueue, self, message, result.id)
        return TaskHandle(self.app, self, result.id, result.duplicate)


def _split_call(call: object) -> tuple[Sequence[object], Mapping[str, object] | None]:
    if (
        isinstance(call, tuple)
        and len(call) == 2
        and isinstance(call[0], list | tuple)
        and isinstance(call[1], Mapping)
    ):
        return call[0], call[1]
    if isinstance(call, list | tuple):
        return call, None
    raise InvalidArgument(
        f"delay_many items are argument tuples or (args, kwargs) pairs, not {call!r}"
    )


def _key(key: KeyFn, args: Sequence[object], kwargs: Mapping[str, object]) -> str | None:
    if key is None or isinstance(key, str):
        return key
    value = key(*args, **kwargs)
    return None if value is None else str(value)


class App:
    """A set of tasks and the broker they go through."""

    def __init__(
        self,
        url: str | None = None,
        *,
        serializer: Serializer | None = None,
        middleware: Sequence[Middleware] | None = None,
    ) -> None:
        self.url = url
        self.serializer: Serializer = serializer or JsonSerializer()
        self.middleware: list[Middleware] = list(
            default_middleware() if middleware is None else middleware
        )
        self.tasks: dict[str, Task[..., object]] = {}
        self._client: Client | None = None
        self._async_client: AsyncClient | None = None
        self._queues: set[str] = set()
        self._lock = threading.Lock()

    # The two ways to use it, for type checkers; the options and their
    # defaults are those of the implementation below.
    @overload
    def task(self, fn: Callable[P, R], /, **options: Unpack[TaskOptions]) -> Task[P, R]: ...

    @overload
    def task(
        self, fn: None = None, /, **options: Unpack[TaskOptions]
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self,
        fn: Callable[P, R] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        priority: int = 0,
        max_attempts: int | None = None,
        timeout: float | None = None,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        backoff: float | Callable[[int], float] | None = None,
        group: KeyFn = None,
        dedup_key: KeyFn = None,
    ) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
        """Register a function as a task (``@app.task`` or ``@app.task(...)``)."""

        def register(f: Callable[P, R]) -> Task[P, R]:
            task_name = name or f"{f.__module__}.{f.__qualname__}"
            if task_name in self.tasks:
                raise InvalidArgument(f"a task named {task_name!r} is registered already")
            task = Task(
                self,
                f,
                name=task_name,
                queue=queue,
                priority=priority,
                max_attempts=max_attempts,
                timeout=timeout,
                retry_on=retry_on,
                backoff=backoff,
                group=group,
                dedup_key=dedup_key,
            )
            self.tasks[task_name] = task
            return task

        return register(fn) if fn is not None else register

    def queues(self) -> list[str]:
        return sorted({t.queue for t in self.tasks.values()})

    def client(self) -> Client:
        """The app's sync client (made on first use, shared by threads)."""
        with self._lock:
            if self._client is None:
                self._client = Client(self.url, name="conveyor-app").connect()
            return self._client

    async def async_client(self) -> AsyncClient:
        if self._async_client is None:
            self._async_client = await AsyncClient(self.url, name="conveyor-app").connect()
        return self._async_client

    def ensure_queue_sync(self, client: Client, queue: str) -> None:
        if queue not in self._queues:
            client.create_queue(queue)
            self._queues.add(queue)

    async def ensure_queue(self, client: AsyncClient, queue: str) -> None:
        if queue not in self._queues:
            await client.create_queue(queue)
            self._queues.add(queue)

    def hook(self, fn: Callable[..., T], *args: object) -> T | None:
        """Run one middleware hook; a failing hook is logged, never fatal."""
        try:
            return fn(*args)
        except Exception:
            import logging

            logging.getLogger("conveyor.worker").exception("middleware hook %s failed", fn)
            return None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        if self._async_client is not None:
            await self._async_client.close()
            self._async_client = None
