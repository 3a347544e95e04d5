"""Messages near the size limits through every path of a real ``conveyor
serve`` (issue 13, part 2): bodies just under the 1 MiB body limit, replies
that would pass the 16 MiB frame limit if they were not cut. A receive of 40
gets fewer, never an error, and every message reaches a consumer on its first
attempt; a page of 100 dead letters holds what fits and the next page goes
on; results of ~1 MiB read back, many at once; the HTTP API's receive is cut
the same way. (A worker with --concurrency 20 running twenty such tasks:
tests/worker/test_large_tasks.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from integration_support import Http, ServerProcess

import conveyor
from conveyor import NewMessage
from conveyor.client import aio
from conveyor.core import wire
from conveyor.store.base import delivery_size

MAX_BODY = 1 << 20
NEAR = MAX_BODY - 100  # just under the body limit
HEADERS = {"trace": "t" * 40}
COUNT = 40
# What a reply may carry (BrokerConfig.max_reply_bytes), and so how many
# such messages one holds.
MAX_REPLY = 16 << 20
PER_REPLY = MAX_REPLY // delivery_size(NEAR, 20 + 40)


@pytest.fixture
def client(server: ServerProcess) -> Iterator[conveyor.Client]:
    with conveyor.Client(server.url, name="large", timeout=60) as c:
        yield c


def body(n: int) -> bytes:
    return b"%06d" % n + bytes([n % 251]) * (NEAR - 6)


def fill(client: conveyor.Client, queue: str, count: int = COUNT) -> list[str]:
    client.create_queue(queue, visibility_timeout=300, max_attempts=1)
    ids: list[str] = []
    for start in range(0, count, 8):  # 8 MiB per enqueue: well within a frame
        batch = [NewMessage(body=body(n), headers=HEADERS) for n in range(start, start + 8)]
        ids += [r.id for r in client.enqueue_many(queue, batch)]
    return ids[:count]


def test_a_receive_of_forty_gets_fewer_and_every_message_arrives_once(
    client: conveyor.Client, queue: str
) -> None:
    ids = fill(client, queue)
    got: list[conveyor.Delivery] = []
    sizes = []
    while len(got) < COUNT:
        batch = client.receive(queue, max=COUNT, wait=1)
        assert batch, f"nothing came after {len(got)} of {COUNT}"
        sizes.append(len(batch))
        got += batch
    assert max(sizes) == PER_REPLY < COUNT, sizes
    assert [d.id for d in got] == ids
    assert all(d.body == body(i) and d.headers == HEADERS for i, d in enumerate(got))
    # Each reached a consumer on its first attempt, with max_attempts=1:
    # nothing was dead-lettered on the way.
    assert {d.attempts for d in got} == {1}
    for d in got:
        d.ack()
    stats = client.stats(queue)
    assert (stats.delivered_total, stats.acked_total, stats.dead) == (COUNT, COUNT, 0)
    assert client.dead_letters(queue) == []


def test_dead_letters_of_a_mebibyte_page_through_all_of_them(
    client: conveyor.Client, queue: str
) -> None:
    ids = fill(client, queue)
    while batch := client.receive(queue, max=COUNT):
        for d in batch:
            d.dead("poison")
    pages: list[int] = []
    seen: list[str] = []
    after = None
    while page := client.dead_letters(queue, limit=100, after=after):
        pages.append(len(page))
        seen += [m.id for m in page]
        assert all(m.body == body(ids.index(m.id)) for m in page)
        after = page[-1].id
    assert seen == ids
    assert max(pages) < COUNT and len(pages) >= COUNT // PER_REPLY, pages
    assert client.redrive(queue) == COUNT


async def test_results_of_a_mebibyte_read_back_many_at_once(
    server: ServerProcess, queue: str
) -> None:
    async with conveyor.AsyncClient(server.url, name="results", timeout=60) as client:
        await client.create_queue(queue, visibility_timeout=300)
        count = 24
        sent = [
            (await client.enqueue_many(queue, [b"%d" % n for n in range(start, start + 8)]))
            for start in range(0, count, 8)
        ]
        ids = [r.id for batch in sent for r in batch]
        done = 0
        while done < count:
            for d in await client.receive(queue, max=count, wait=1):
                await d.ack(result=body(int(d.body)))
                done += 1
        # 24 MiB of results asked for at once, on one connection: they are
        # sent as the budget allows, and every one arrives whole.
        results = await asyncio.gather(*(client.result(i, timeout=10) for i in ids))
        assert [r.body for r in results] == [body(n) for n in range(count)]


async def test_acks_with_a_mebibyte_result_each_made_at_once_all_settle(
    server: ServerProcess, queue: str
) -> None:
    """Settles made in one event-loop turn travel as one request: twenty acks
    of ~1 MiB results would make a frame over the limit, so the client cuts
    the batch by bytes and each part is its own request."""
    async with conveyor.AsyncClient(server.url, name="acks", timeout=60) as client:
        await client.create_queue(queue, visibility_timeout=300)
        count = 20
        await client.enqueue_many(queue, [b"%d" % n for n in range(count)])
        got: list[aio.Delivery] = []
        while len(got) < count:
            got += await client.receive(queue, max=count, wait=1)
        await asyncio.gather(*(d.ack(result=body(int(d.body))) for d in got))
        results = [await client.result(d.id, timeout=10) for d in got]
        assert [r.body for r in results] == [body(int(d.body)) for d in got]
        assert (await client.stats(queue)).leased == 0


def test_the_http_receive_is_cut_to_the_same_bound(server: ServerProcess, queue: str) -> None:
    with conveyor.Client(server.url, timeout=60) as client:
        fill(client, queue, 20)
    http = Http(server.http_url)
    reply = http.post(f"/v1/queues/{queue}/receive", {"max": 20}, timeout=60)
    assert reply.status == 200, reply
    assert len(reply.json()) == PER_REPLY


def test_the_hello_reply_announces_the_reply_bound(server: ServerProcess) -> None:
    from integration_support import RawConnection

    with RawConnection(server.port) as conn:
        info = conn.hello()
    assert info["max_reply"] == MAX_REPLY
    assert info["max_frame"] == wire.DEFAULT_MAX_FRAME >= MAX_REPLY + 64 * 1024
