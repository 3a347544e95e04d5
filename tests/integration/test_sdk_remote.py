"""The Python SDK against a real ``conveyor serve`` process: the sync
``conveyor.Client`` and the ``conveyor.AsyncClient`` over
``conveyor://127.0.0.1:PORT``, the embedded ``sqlite:///path.db`` broker, and
the ``CONVEYOR_URL`` default."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from integration_support import ServerProcess

import conveyor
from conveyor import NewMessage
from conveyor.core.types import EnqueueResult, MessageState, QueueStats, ResultStatus

JSON = {"content-type": "application/json"}


@pytest.fixture
def client(server: ServerProcess) -> Iterator[conveyor.Client]:
    with conveyor.Client(server.url, name="sdk-test", timeout=10) as c:
        yield c


# -- the sync Client ----------------------------------------------------------------


def test_enqueue_with_every_option_and_read_it_back(client: conveyor.Client, queue: str) -> None:
    config = client.create_queue(queue, visibility_timeout=20.0, max_attempts=4)
    assert config.name == queue
    assert config.visibility_timeout == 20.0
    assert config.max_attempts == 4

    first = client.enqueue(
        queue,
        {"pizza": "margherita"},
        priority=7,
        ttl=60.0,
        dedup_key="order-1",
        group="table-3",
        headers={"trace": "abc"},
        max_attempts=2,
    )
    assert isinstance(first, EnqueueResult)
    assert isinstance(first.id, str) and len(first.id) == 16
    assert first.duplicate is False

    again = client.enqueue(queue, {"pizza": "other"}, dedup_key="order-1")
    assert again == EnqueueResult(first.id, True)
    assert client.stats(queue).ready == 1

    (got,) = client.receive(queue, max=10, wait=1)
    assert got.id == first.id
    assert got.queue == queue
    assert got.json() == {"pizza": "margherita"}
    assert got.body == b'{"pizza":"margherita"}'
    assert got.headers == {**JSON, "trace": "abc"}
    assert got.priority == 7
    assert got.group == "table-3"
    assert got.attempts == 1
    assert got.max_attempts == 2
    assert isinstance(got.token, int) and got.token >= 1
    assert got.lease == 20.0
    assert got.deadline > time.time() + 10

    got.ack(result={"baked": True})
    result = client.result(first.id, timeout=5)
    assert result.id == first.id
    assert result.status is ResultStatus.OK
    assert result.body == b'{"baked":true}'
    stats = client.stats(queue)
    assert (stats.ready, stats.leased, stats.acked_total, stats.enqueued_total) == (0, 0, 1, 1)


def test_bodies_are_bytes_str_or_json(client: conveyor.Client, queue: str) -> None:
    client.create_queue(queue)
    binary = bytes(range(256))
    ids = [
        client.enqueue(queue, binary).id,
        client.enqueue(queue, "héllo, wörld").id,
        client.enqueue(queue, {"a": [1, 2.5, None, "x"]}).id,
        client.enqueue(queue, [1, 2, 3]).id,
        client.enqueue(queue, b"", headers={"kind": "empty"}).id,
    ]
    got = client.receive(queue, max=10)
    assert [d.id for d in got] == ids  # same priority: enqueue order
    assert got[0].body == binary and got[0].headers == {}
    assert got[1].text() == "héllo, wörld" and got[1].headers == {}
    assert got[2].json() == {"a": [1, 2.5, None, "x"]} and got[2].headers == JSON
    assert got[3].json() == [1, 2, 3]
    assert got[4].body == b"" and got[4].headers == {"kind": "empty"}
    for d in got:
        d.ack()
    with pytest.raises(conveyor.InvalidArgument):
        client.enqueue(queue, object())  # not JSON-able


def test_priority_then_enqueue_order(client: conveyor.Client, queue: str) -> None:
    client.create_queue(queue)
    low = client.enqueue(queue, "low", priority=0).id
    high = client.enqueue(queue, "high", priority=9).id
    mid1 = client.enqueue(queue, "mid1", priority=5).id
    mid2 = client.enqueue(queue, "mid2", priority=5).id
    got = client.receive(queue, max=10)
    assert [d.id for d in got] == [high, mid1, mid2, low]
    for d in got:
        d.ack()


def test_delay_hides_a_message_until_its_time(client: conveyor.Client, queue: str) -> None:
    client.create_queue(queue)
    client.enqueue(queue, "much later", delay=3600)  # never due within the test
    assert client.receive(queue, wait=0) == []
    assert client.stats(queue).scheduled == 1
    sent = client.enqueue(queue, "soon", delay=0.5)
    (got,) = client.receive(queue, wait=30)  # woken when it comes due
    assert got.id == sent.id
    got.ack()
    assert client.stats(queue).scheduled == 1


def test_ttl_dead_letters_an_expired_message(client: conveyor.Client, queue: str) -> None:
    client.create_queue(queue)
    sent = client.enqueue(queue, "stale soon", ttl=0.3)
    deadline = time.monotonic() + 10
    while not (dead := client.dead_letters(queue)):
        assert time.monotonic() < deadline, "the expired message was not dead-lettered"
        time.sleep(0.1)
    assert [m.id for m in dead] == [sent.id]
    assert dead[0].dead_reason == "expired"
    assert dead[0].state is MessageState.DEAD
    assert client.receive(queue) == []
    assert client.stats(queue).expired_total == 1


def test_a_group_is_served_in_order_one_at_a_time(client: conveyor.Client, queue: str) -> None:
    client.create_queue(queue)
    g1 = [client.enqueue(queue, f"a{i}", group="A").id for i in range(3)]
    other = client.enqueue(queue, "b0", group="B").id
    got = client.receive(queue, max=10)
    assert sorted(d.id for d in got) == sorted([g1[0], other])
    assert client.receive(queue, max=10) == []  # A's next waits for A's first
    for d in got:
        d.ack()
    for expected in g1[1:]:
        (d,) = client.receive(queue, max=10, wait=2)
        assert d.id == expected and d.group == "A"
        d.ack()


def test_nack_retries_then_dead_letters_then_redrive(client: conveyor.Client, queue: str) -> None:
    client.create_queue(queue, max_attempts=5)
    sent = client.enqueue(queue, "flaky", max_attempts=2)
    (first,) = client.receive(queue)
    assert first.attempts == 1
    first.nack(delay=0.0, error="boom 1")
    (second,) = client.receive(queue, wait=2)
    assert second.id == sent.id and second.attempts == 2 and second.token > first.token
    second.nack(delay=0.0, error="boom 2")

    (dead,) = client.dead_letters(queue)
    assert dead.id == sent.id
    assert dead.attempts == 2
    assert dead.last_error == "boom 2"
    assert dead.dead_reason
    assert client.stats(queue).dead == 1
    assert client.result(sent.id, timeout=1).status is ResultStatus.DEAD

    assert client.redrive(queue) == 1
    assert client.dead_letters(queue) == []
    (again,) = client.receive(queue, wait=2)
    assert again.id == sent.id
    again.ack()


def test_dead_with_a_reason_and_redrive_by_id(client: conveyor.Client, queue: str) -> None:
    client.create_queue(queue)
    ids = [m.id for m in client.enqueue_many(queue, ["x", "y"])]
    for d in client.receive(queue, max=2):
        d.dead("poison pill")
    dead = client.dead_letters(queue)
    assert [m.id for m in dead] == ids
    assert {m.dead_reason for m in dead} == {"poison pill"}
    assert [m.id for m in client.dead_letters(queue, limit=1)] == ids[:1]
    assert [m.id for m in client.dead_letters(queue, after=ids[0])] == ids[1:]
    assert client.redrive(queue, [ids[1]]) == 1
    (back,) = client.receive(queue)
    assert back.id == ids[1]
    back.ack()


def test_extend_keeps_a_lease_past_its_visibility(
    server: ServerProcess, client: conveyor.Client, queue: str
) -> None:
    client.create_queue(queue)
    client.enqueue(queue, "slow job")
    (d,) = client.receive(queue, visibility=1.0)
    deadline = d.extend(30)
    assert deadline > time.time() + 25
    time.sleep(1.5)  # past the first visibility timeout
    with conveyor.Client(server.url, timeout=10) as other:
        assert other.receive(queue, wait=0.5) == []
    d.ack()
    with pytest.raises(conveyor.LeaseLost):
        d.ack()  # its lease ended with the first ack


def test_an_expired_lease_is_delivered_again_and_the_old_token_is_fenced(
    server: ServerProcess, client: conveyor.Client, queue: str
) -> None:
    client.create_queue(queue)
    client.enqueue(queue, "job")
    (first,) = client.receive(queue, visibility=0.3)
    with conveyor.Client(server.url, timeout=10) as other:
        (second,) = other.receive(queue, wait=5)
        assert second.id == first.id and second.token > first.token
        assert second.attempts == 2
        with pytest.raises(conveyor.LeaseLost):
            first.ack()
        with pytest.raises(conveyor.LeaseLost):
            first.extend(10)
        second.ack()
    assert client.stats(queue).acked_total == 1


def test_enqueue_many_is_all_or_nothing(client: conveyor.Client, queue: str) -> None:
    client.create_queue(queue)
    results = client.enqueue_many(
        queue,
        [b"raw", "text", {"json": True}, NewMessage(body=b"urgent", priority=9, group="g")],
    )
    assert [r.duplicate for r in results] == [False] * 4
    assert len({r.id for r in results}) == 4
    with pytest.raises(conveyor.InvalidArgument):
        client.enqueue_many(queue, ["fine", NewMessage(body=b"bad", priority=12)])
    assert client.stats(queue).ready == 4  # nothing of the refused batch
    got = client.receive(queue, max=10)
    assert got[0].body == b"urgent" and got[0].group == "g"
    assert {d.id for d in got} == {r.id for r in results}
    for d in got:
        d.ack()


def test_publish_copies_into_every_bound_queue(client: conveyor.Client, queue: str) -> None:
    emails, stats = f"{queue}-emails", f"{queue}-stats"
    client.create_queue(emails)
    client.create_queue(stats)
    topic = f"orders.{queue}"
    client.bind(f"orders.{queue}", emails)
    client.bind("orders.#", stats)
    bindings = {(b.pattern, b.queue) for b in client.bindings()}
    assert {(topic, emails), ("orders.#", stats)} <= bindings

    sent = client.publish(topic, {"order": 1}, priority=3, headers={"k": "v"})
    assert set(sent) == {emails, stats}
    for name in (emails, stats):
        (d,) = client.receive(name)
        assert d.id == sent[name].id
        assert d.json() == {"order": 1} and d.priority == 3 and d.headers["k"] == "v"
        d.ack()
    assert client.publish("nobody.listens.here", "x") == {}
    assert client.unbind("orders.#", stats) is True
    assert client.unbind("orders.#", stats) is False
    assert set(client.publish(topic, "again")) == {emails}


def test_queues_stats_and_errors_keep_the_connection_usable(
    client: conveyor.Client, queue: str
) -> None:
    client.create_queue(queue, max_length=2)
    assert queue in {q.name for q in client.queues()}
    with pytest.raises(conveyor.QueueNotFound):
        client.enqueue(f"{queue}-missing", "x")
    with pytest.raises(conveyor.InvalidArgument):
        client.enqueue(queue, "x", priority=10)
    with pytest.raises(conveyor.InvalidArgument):
        client.create_queue("bad name!")
    with pytest.raises(conveyor.QueueExists):
        client.create_queue(queue, max_length=3, exist_ok=False)
    with pytest.raises(conveyor.BodyTooLarge):
        client.enqueue(queue, b"x" * ((1 << 20) + 1))
    with pytest.raises(conveyor.ResultTimeout):
        client.result(client.enqueue(queue, "no result yet").id, timeout=0.2)
    client.enqueue(queue, "second")
    with pytest.raises(conveyor.QueueFull):
        client.enqueue(queue, "third")
    stats = client.stats(queue)
    assert (stats.queue, stats.ready, stats.enqueued_total) == (queue, 2, 2)
    assert client.purge(queue) == 2
    assert client.stats(queue).ready == 0


def test_receive_long_polls_until_a_message_comes(
    server: ServerProcess, client: conveyor.Client, queue: str
) -> None:
    client.create_queue(queue)

    def produce() -> None:
        time.sleep(0.5)
        with conveyor.Client(server.url, timeout=10) as producer:
            producer.enqueue(queue, "wake up")

    thread = threading.Thread(target=produce)
    thread.start()
    try:
        (got,) = client.receive(queue, max=5, wait=10)
    finally:
        thread.join()
    # The poll came back with the message that arrived while it waited.
    assert got.text() == "wake up"
    got.ack()
    start = time.monotonic()
    assert client.receive(queue, wait=0.5) == []
    # A lower bound, kept: the empty poll waited what it asked (load only
    # makes that longer).
    assert time.monotonic() - start >= 0.45


def test_result_waits_for_the_ack(
    server: ServerProcess, client: conveyor.Client, queue: str
) -> None:
    client.create_queue(queue)
    sent = client.enqueue(queue, "compute")

    def worker() -> None:
        with conveyor.Client(server.url, timeout=10) as w:
            (d,) = w.receive(queue, wait=5)
            time.sleep(0.3)
            d.ack(result="42")

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        result = client.result(sent.id, timeout=10)
    finally:
        thread.join()
    assert result.status is ResultStatus.OK and result.body == b"42"


@pytest.mark.timeout(60)
def test_sync_consume_with_prefetch(client: conveyor.Client, queue: str) -> None:
    client.create_queue(queue)
    sent = [r.id for r in client.enqueue_many(queue, [f"m{i}" for i in range(30)])]
    seen: list[str] = []
    for d in client.consume(queue, prefetch=5):
        assert client.stats(queue).leased <= 5
        seen.append(d.id)
        d.ack()
        if len(seen) == len(sent):
            break
    assert seen == sent
    stats = client.stats(queue)
    assert (stats.ready, stats.leased, stats.acked_total) == (0, 0, 30)


async def test_consume_accepts_a_prefetch_above_a_thousand(
    server: ServerProcess, queue: str
) -> None:
    async with conveyor.AsyncClient(server.url, timeout=10) as client:
        await client.create_queue(queue)
        await client.enqueue_many(queue, ["a", "b", "c"])

        async def take_three() -> int:
            n = 0
            async for d in client.consume(queue, prefetch=5000):
                await d.ack()
                n += 1
                if n == 3:
                    break
            return n

        assert await asyncio.wait_for(take_three(), 10) == 3


async def test_deliveries_a_closed_consume_never_yielded_go_back_uncounted(
    server: ServerProcess, queue: str
) -> None:
    """A consume loop left after one delivery: the others pushed to it were
    never handed to the loop's code, so they come back at once, their
    delivery not counted as an attempt (max_attempts=1 would dead-letter a
    counted one)."""
    async with conveyor.AsyncClient(server.url, timeout=10) as client:
        await client.create_queue(queue, max_attempts=1)
        sent = [r.id for r in await client.enqueue_many(queue, [f"m{i}" for i in range(10)])]
        async for d in client.consume(queue, prefetch=10):
            await d.ack()
            break

        def all_back(stats: QueueStats) -> bool:
            return stats.leased == 0 and stats.ready == 9

        await wait_for_stats(client, queue, all_back)
        again = await client.receive(queue, max=10)
        assert sorted(d.id for d in again) == sorted(sent[1:])
        assert {d.attempts for d in again} == {1}
        stats = await client.stats(queue)
        assert (stats.dead, stats.nacked_total) == (0, 0)


async def wait_for_stats(
    client: conveyor.AsyncClient, queue: str, ok: Callable[[QueueStats], bool]
) -> None:
    for _ in range(1000):  # the releases travel in the background
        if ok(await client.stats(queue)):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"stats never matched: {await client.stats(queue)}")


def test_the_default_url_comes_from_conveyor_url(
    server: ServerProcess, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_URL", server.url)
    with conveyor.Client(timeout=10) as c:
        assert c.url == server.url
        c.create_queue(queue)
        c.enqueue(queue, "via env")
    with conveyor.Client(server.url, timeout=10) as c:
        (d,) = c.receive(queue)
        assert d.text() == "via env"
        d.ack()


# -- the AsyncClient ----------------------------------------------------------------


async def test_async_client_end_to_end(server: ServerProcess, queue: str) -> None:
    async with conveyor.AsyncClient(server.url, name="async-test", timeout=10) as client:
        await client.create_queue(queue, visibility_timeout=15)
        result = await client.enqueue(
            queue,
            {"n": 1},
            priority=4,
            delay=0.0,
            ttl=30.0,
            dedup_key="k1",
            group="g1",
            headers={"h": "1"},
            max_attempts=3,
        )
        assert result.duplicate is False
        assert (await client.enqueue(queue, {"n": 2}, dedup_key="k1")).duplicate is True
        batch = await client.enqueue_many(queue, ["two", b"three"])
        (d,) = await client.receive(queue, max=1, wait=1, visibility=5)
        assert (d.id, d.json(), d.group, d.priority) == (result.id, {"n": 1}, "g1", 4)
        assert d.headers == {**JSON, "h": "1"} and d.attempts == 1 and d.max_attempts == 3
        assert await d.extend(20) > time.time() + 15

        waiting = asyncio.create_task(client.result(result.id, timeout=10))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        await d.ack(result=b"\x00done")
        assert (await waiting).body == b"\x00done"

        got = await client.receive(queue, max=10)
        assert [x.id for x in got] == [r.id for r in batch]
        await got[0].nack(delay=0.0, error="retry me")
        await got[1].dead("no thanks")
        (retried,) = await client.receive(queue, wait=2)
        assert retried.id == batch[0].id and retried.attempts == 2
        await retried.ack()
        (dead,) = await client.dead_letters(queue)
        assert (dead.id, dead.dead_reason) == (batch[1].id, "no thanks")
        assert await client.redrive(queue) == 1

        stats = await client.stats(queue)
        assert (stats.ready, stats.dead, stats.acked_total) == (1, 0, 2)
        assert queue in {q.name for q in await client.queues()}
        await client.bind(f"evt.{queue}", queue)
        published = await client.publish(f"evt.{queue}", "event")
        assert list(published) == [queue]
        assert await client.purge(queue) == 2


@pytest.mark.timeout(60)
async def test_async_consume_iterator_respects_prefetch(server: ServerProcess, queue: str) -> None:
    async with conveyor.AsyncClient(server.url, timeout=10) as client:
        await client.create_queue(queue)
        sent = [r.id for r in await client.enqueue_many(queue, [f"m{i}" for i in range(40)])]
        seen: list[str] = []
        acked: set[str] = set()

        async def consume() -> None:
            async for d in client.consume(queue, prefetch=4):
                seen.append(d.id)
                assert (await client.stats(queue)).leased <= 4
                if len(seen) % 10 == 0 and d.attempts == 1:
                    await d.nack(delay=0.0)  # comes back later
                else:
                    await d.ack()
                    acked.add(d.id)
                if len(acked) == len(sent):
                    return

        await asyncio.wait_for(consume(), 45)
        assert acked == set(sent)
        assert len(seen) > len(sent)  # the nacked ones came back
        stats = await client.stats(queue)
        assert (stats.ready, stats.leased, stats.acked_total) == (0, 0, 40)


async def test_concurrent_async_producers_share_a_connection(
    server: ServerProcess, queue: str
) -> None:
    async with conveyor.AsyncClient(server.url, timeout=10) as client:
        await client.create_queue(queue)
        results = await asyncio.gather(*(client.enqueue(queue, i) for i in range(200)))
        assert len({r.id for r in results}) == 200
        assert (await client.stats(queue)).ready == 200
        assert await client.purge(queue) == 200


# -- the embedded broker -------------------------------------------------------------


def test_embedded_sqlite_url_runs_the_same_flow(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/app.db"
    assert url.startswith("sqlite:////")
    with conveyor.Client(url) as client:
        client.create_queue("jobs", max_attempts=2)
        sent = client.enqueue("jobs", {"x": 1}, priority=3, headers={"h": "v"}, group="g")
        kept = client.enqueue("jobs", "kept for later")
        (d,) = client.receive("jobs", max=1, wait=1)
        assert (d.id, d.json(), d.group, d.headers) == (sent.id, {"x": 1}, "g", {**JSON, "h": "v"})
        d.ack(result="ok")
        assert client.result(sent.id, timeout=1).body == b"ok"
        client.bind("t.#", "jobs")
        assert set(client.publish("t.x", "pub")) == {"jobs"}
        ids = []
        for got in client.consume("jobs", prefetch=2):
            ids.append(got.id)
            got.ack()
            if len(ids) == 2:
                break
        assert ids[0] == kept.id
        client.enqueue("jobs", "survives a restart")
    assert (tmp_path / "app.db").exists()
    with conveyor.Client(url) as client:
        (d,) = client.receive("jobs")
        assert d.text() == "survives a restart"
        d.dead("checked")
        assert client.dead_letters("jobs")[0].dead_reason == "checked"


async def test_embedded_async_client(tmp_path: Path) -> None:
    async with conveyor.AsyncClient(f"sqlite:///{tmp_path}/async.db") as client:
        await client.create_queue("q")
        sent = await client.enqueue_many("q", ["a", "b", "c"])
        got = []
        async for d in client.consume("q", prefetch=2):
            got.append(d.id)
            await d.ack()
            if len(got) == 3:
                break
        assert got == [r.id for r in sent]
