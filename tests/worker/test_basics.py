"""The worker runtime end to end: a real broker, a real `conveyor worker`
process, tasks enqueued from this process through the app's sync client.

Covers results on every pool, delay_many, priority and delay, failure into
the dead letters and redrive, Retry, current_task(), time limits, retry_on,
and middleware whose hooks raise.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from worker_harness import StartWorker, TasksModule, ids_with, read_events, wait_until

import conveyor

TASKS = """
app = conveyor.App(os.environ["CONVEYOR_URL"])


def context():
    ctx = conveyor.current_task()
    return {
        "id": ctx.id,
        "name": ctx.name,
        "queue": ctx.queue,
        "attempt": ctx.attempt,
        "max_attempts": ctx.max_attempts,
        "token": ctx.token,
        "pid": os.getpid(),
    }


@app.task(queue="work")
def add(a, b):
    record("done")
    return a + b


@app.task(queue="work")
async def add_async(a, b):
    await asyncio.sleep(0.01)
    record("done")
    return a + b


@app.task(queue="work")
def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


@app.task(queue="work")
def whoami():
    return context()


@app.task(queue="work")
async def whoami_async():
    await asyncio.sleep(0)
    return context()


@app.task(queue="work", max_attempts=2, backoff=0.1)
def always_fails(x):
    record("attempt")
    if os.path.exists(os.path.join(HERE, "fixed")):
        return "fixed"
    raise RuntimeError(f"boom {x}")


@app.task(queue="work", max_attempts=3)
def retry_once():
    attempt = conveyor.current_task().attempt
    record("attempt", attempt, time.time())
    if attempt == 1:
        raise conveyor.Retry(delay=0.2)
    return attempt


@app.task(queue="work", timeout=0.5, max_attempts=1)
def too_slow(seconds):
    record("start")
    time.sleep(seconds)
    record("done")
    return "finished"


@app.task(queue="work", timeout=0.5, max_attempts=1)
async def too_slow_async(seconds):
    record("start")
    await asyncio.sleep(seconds)
    record("done")
    return "finished"


@app.task(queue="short-lease")
def outlives_its_lease(seconds):
    # Runs several lease lengths; the worker must keep renewing the lease.
    record("start")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not conveyor.current_task().lease_lost:
        time.sleep(0.1)
    record("done", f"lease_lost={conveyor.current_task().lease_lost}")
    return os.getpid()


@app.task(queue="work", max_attempts=3, backoff=0.05, retry_on=(ValueError,))
def picky(kind):
    record("attempt")
    raise {"value": ValueError, "type": TypeError}[kind](f"picky about {kind}")
"""

POOLS = ["threads", "processes", "async"]


@pytest.mark.parametrize("pool", POOLS)
def test_results_round_trip_on_every_pool(
    pool: str, tasks_module: TasksModule, start_worker: StartWorker, tmp_path: Path
) -> None:
    tasks = tasks_module(TASKS)
    worker = start_worker(["work"], pool=pool, concurrency=2)

    plain = tasks.add.delay(2, 3)
    coroutine = tasks.add_async.delay(4, 5)
    mixed = tasks.echo.delay(1, "x", k=[1, {"deep": None}])
    assert plain.result(timeout=20) == 5
    assert coroutine.result(timeout=20) == 9
    assert mixed.result(timeout=20) == {"args": [1, "x"], "kwargs": {"k": [1, {"deep": None}]}}
    assert {e.id for e in read_events(tmp_path) if e.kind == "done"} == {plain.id, coroutine.id}

    # current_task() inside a sync and an async task function
    for task, name in ((tasks.whoami, "whoami"), (tasks.whoami_async, "whoami_async")):
        handle = task.delay()
        info = handle.result(timeout=20)
        assert info["id"] == handle.id
        assert info["name"] == f"tasks_app.{name}"
        assert info["queue"] == "work"
        assert info["attempt"] == 1
        assert info["max_attempts"] == 5  # the queue's default
        assert isinstance(info["token"], int) and info["token"] >= 1
        if pool == "processes":
            assert info["pid"] != worker.pid  # ran in a child
        else:
            assert info["pid"] == worker.pid
    assert worker.proc.poll() is None


def test_delay_many_takes_argument_tuples_and_pairs(
    tasks_module: TasksModule, start_worker: StartWorker
) -> None:
    tasks = tasks_module(TASKS)
    start_worker(["work"])
    handles = tasks.echo.delay_many(
        [
            (1, 2),
            ((3,), {"k": "v"}),
            ([4, 5], {}),
            (),
            ([[6]], {"nested": [7]}),
        ]
    )
    assert len({h.id for h in handles}) == 5
    assert not any(h.duplicate for h in handles)
    assert [h.result(timeout=20) for h in handles] == [
        {"args": [1, 2], "kwargs": {}},
        {"args": [3], "kwargs": {"k": "v"}},
        {"args": [4, 5], "kwargs": {}},
        {"args": [], "kwargs": {}},
        {"args": [[6]], "kwargs": {"nested": [7]}},
    ]
    assert tasks.echo.delay_many([]) == []


def test_enqueue_with_priority_and_delay(
    tasks_module: TasksModule, start_worker: StartWorker, client: conveyor.Client, tmp_path: Path
) -> None:
    tasks = tasks_module(TASKS)
    # A backlog before any worker: the high-priority half must run first, each
    # half in enqueue order (one at a time: concurrency 1, so prefetch 1).
    low = [tasks.add.enqueue((i, 0)) for i in range(5)]
    high = [tasks.add.enqueue((i, 100), priority=9) for i in range(5)]
    start_worker(["work"], concurrency=1)
    expected = [i + 100 for i in range(5)] + list(range(5))
    assert [h.result(timeout=20) for h in high + low] == expected
    assert ids_with(read_events(tmp_path), "done") == [h.id for h in high + low]

    # A delayed task is not run before its time (an hour: never within the
    # test); one enqueued after it is. A short delay runs once it is due.
    much_later = tasks.add.enqueue((5, 5), delay=3600)
    soon = tasks.add.enqueue((1, 1), delay=0.5)
    assert tasks.add.delay(2, 2).result(timeout=20) == 4
    assert soon.result(timeout=20) == 2
    assert much_later.id not in ids_with(read_events(tmp_path), "done")
    assert client.stats("work").scheduled == 1


@pytest.mark.parametrize("pool", POOLS)
def test_failed_task_is_dead_lettered_with_its_traceback_and_redriven(
    pool: str,
    tasks_module: TasksModule,
    start_worker: StartWorker,
    client: conveyor.Client,
    tmp_path: Path,
) -> None:
    tasks = tasks_module(TASKS)
    start_worker(["work"], pool=pool)
    handle = tasks.always_fails.delay(7)
    with pytest.raises(conveyor.TaskFailed) as failed:
        handle.result(timeout=20)
    remote = failed.value.remote_traceback
    assert "Traceback (most recent call last)" in remote
    assert "RuntimeError: boom 7" in remote
    assert ids_with(read_events(tmp_path), "attempt") == [handle.id] * 2  # max_attempts=2

    [dead] = [m for m in client.dead_letters("work") if m.id == handle.id]
    assert dead.attempts == 2
    assert dead.dead_reason is not None
    assert "Traceback (most recent call last)" in dead.dead_reason
    assert "RuntimeError: boom 7" in dead.dead_reason

    # Redriven, it runs its attempts again and fails again.
    assert client.redrive("work", [handle.id]) == 1
    with pytest.raises(conveyor.TaskFailed, match=r"always_fails"):
        handle.result(timeout=20)
    assert ids_with(read_events(tmp_path), "attempt") == [handle.id] * 4

    # Fixed (the flag file), redriven once more, it succeeds.
    (tmp_path / "fixed").touch()
    assert client.redrive("work") == 1
    assert handle.result(timeout=20) == "fixed"
    assert client.dead_letters("work") == []


@pytest.mark.parametrize("pool", POOLS)
def test_retry_makes_another_attempt_after_its_delay(
    pool: str, tasks_module: TasksModule, start_worker: StartWorker, tmp_path: Path
) -> None:
    tasks = tasks_module(TASKS)
    start_worker(["work"], pool=pool)
    handle = tasks.retry_once.delay()
    assert handle.result(timeout=20) == 2
    # In time order: in the process pool the two attempts may run in two children.
    attempts = sorted(
        (e for e in read_events(tmp_path) if e.kind == "attempt"), key=lambda e: float(e.extra[1])
    )
    assert [(e.id, e.extra[0]) for e in attempts] == [(handle.id, "1"), (handle.id, "2")]
    # A lower bound, kept: the retry waited its delay (load only makes that longer).
    assert float(attempts[1].extra[1]) - float(attempts[0].extra[1]) >= 0.18


@pytest.mark.parametrize("pool", POOLS)
def test_time_limit_fails_the_task_and_the_worker_goes_on(
    pool: str, tasks_module: TasksModule, start_worker: StartWorker, tmp_path: Path
) -> None:
    tasks = tasks_module(TASKS)
    worker = start_worker(["work"], pool=pool, concurrency=1)
    # A thread cannot be stopped: keep its overrun short, the pool's one thread waits for it.
    seconds = 1.5 if pool == "threads" else 30
    task = tasks.too_slow_async if pool == "async" else tasks.too_slow
    handle = task.delay(seconds)
    # Failed by its limit: a task that ran its course would succeed (threads)
    # or outlast the wait (the other pools).
    with pytest.raises(conveyor.TaskFailed) as failed:
        handle.result(timeout=20)
    assert "TimeLimitExceeded" in failed.value.remote_traceback

    # Later tasks still run (in the process pool, on a fresh child).
    later = tasks.add.delay_many([(i, i) for i in range(3)])
    assert [h.result(timeout=20) for h in later] == [0, 2, 4]
    events = read_events(tmp_path)
    [slow_start] = [e for e in events if e.id == handle.id and e.kind == "start"]
    if pool == "processes":
        assert handle.id not in ids_with(events, "done")  # its child was killed
        later_pids = {e.pid for e in events if e.id in {h.id for h in later}}
        assert slow_start.pid not in later_pids
    if pool == "async":
        assert handle.id not in ids_with(events, "done")  # cancelled
    assert worker.proc.poll() is None


def test_thread_pool_time_limit_counts_only_the_tasks_own_run(
    tasks_module: TasksModule, start_worker: StartWorker, tmp_path: Path
) -> None:
    """A thread that overran its limit keeps running (threads cannot be
    killed); the task after it must still get its full time limit, and a
    task that failed must not run after all."""
    tasks = tasks_module(TASKS)
    start_worker(["work"], pool="threads", concurrency=1)
    overrun = tasks.too_slow.delay(1.5)
    quick = tasks.too_slow.delay(0.1)  # 0.1 s of work, well within its 0.5 s
    with pytest.raises(conveyor.TaskFailed):
        overrun.result(timeout=20)
    try:
        outcome = quick.result(timeout=20)
    except conveyor.TaskFailed as exc:
        time.sleep(2.0)  # long enough for the overrun thread to end and the queue to move
        ran = [e.kind for e in read_events(tmp_path) if e.id == quick.id]
        pytest.fail(
            f"a task of 0.1 s failed its 0.5 s limit ({exc.remote_traceback.strip()!r}) "
            f"while it waited for the overrunning task's thread; afterwards it ran anyway: {ran}"
        )
    assert outcome == "finished"


@pytest.mark.parametrize("pool", POOLS)
def test_running_task_keeps_its_lease_past_the_visibility_timeout(
    pool: str,
    tasks_module: TasksModule,
    start_worker: StartWorker,
    client: conveyor.Client,
    tmp_path: Path,
) -> None:
    client.create_queue("short-lease", visibility_timeout=1)
    tasks = tasks_module(TASKS)
    first = start_worker(["short-lease"], pool=pool, concurrency=1)
    handle = tasks.outlives_its_lease.delay(2.5)
    wait_until(lambda: read_events(tmp_path), 20, "the task to start")
    # A second worker that would get the task if its lease ran out.
    start_worker(["short-lease"], pool=pool, concurrency=1)
    owner = handle.result(timeout=20)
    events = read_events(tmp_path)
    assert [(e.kind, e.extra) for e in events] == [
        ("start", ()),
        ("done", ("lease_lost=False",)),
    ]
    assert owner == events[0].pid == events[1].pid  # one run, and its outcome stands
    if pool != "processes":
        assert owner == first.pid
    stats = client.stats("short-lease")
    assert (stats.delivered_total, stats.acked_total, stats.lease_expired_total) == (1, 1, 0)


def test_retry_on_limits_which_errors_are_retried(
    tasks_module: TasksModule, start_worker: StartWorker, client: conveyor.Client, tmp_path: Path
) -> None:
    tasks = tasks_module(TASKS)
    start_worker(["work"])
    wrong_type = tasks.picky.delay("type")
    with pytest.raises(conveyor.TaskFailed) as failed:
        wrong_type.result(timeout=20)
    assert "TypeError: picky about type" in failed.value.remote_traceback
    assert ids_with(read_events(tmp_path), "attempt") == [wrong_type.id]  # no retry
    assert wrong_type.id in {m.id for m in client.dead_letters("work")}

    wrong_value = tasks.picky.delay("value")
    with pytest.raises(conveyor.TaskFailed) as failed:
        wrong_value.result(timeout=20)
    assert "ValueError: picky about value" in failed.value.remote_traceback
    assert ids_with(read_events(tmp_path), "attempt").count(wrong_value.id) == 3


MIDDLEWARE_TASKS = """
from conveyor.worker.middleware import Middleware, default_middleware


class Exploding(Middleware):
    def before_enqueue(self, task, message):
        raise RuntimeError("before_enqueue exploded")

    def after_enqueue(self, task, message, message_id):
        raise RuntimeError("after_enqueue exploded")

    def before_execute(self, execution):
        raise RuntimeError("before_execute exploded")

    def after_execute(self, execution):
        raise RuntimeError("after_execute exploded")


app = conveyor.App(
    os.environ["CONVEYOR_URL"], middleware=[Exploding(), *default_middleware(), Exploding()]
)


@app.task(queue="work")
def add(a, b):
    return a + b


@app.task(queue="work", max_attempts=1)
def fails():
    raise ValueError("plain failure")
"""


def test_middleware_whose_hooks_raise_does_not_kill_the_worker(
    tasks_module: TasksModule, start_worker: StartWorker
) -> None:
    tasks = tasks_module(MIDDLEWARE_TASKS)
    worker = start_worker(["work"])
    handles = tasks.add.delay_many([(i, 1) for i in range(10)])
    assert [h.result(timeout=20) for h in handles] == [i + 1 for i in range(10)]
    with pytest.raises(conveyor.TaskFailed) as failed:
        tasks.fails.delay().result(timeout=20)
    assert "ValueError: plain failure" in failed.value.remote_traceback
    assert tasks.add.delay(20, 22).result(timeout=20) == 42
    assert worker.proc.poll() is None
    log = wait_until(
        lambda: (text := worker.log()) and "after_execute exploded" in text and text,
        5,
        "the failing hook to be logged",
    )
    assert "before_execute exploded" in log
