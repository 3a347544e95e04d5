"""The native server owns every task it starts (core/tasks.py): a lost
connection's requests and consumers are cancelled and waited for before its
session closes, and ``stop`` returns only once every connection's ending is
done, those lost before it too."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conveyor.broker.broker import Broker
from conveyor.core import wire
from conveyor.server.native import NativeServer
from conveyor.store.sqlite.store import SqliteStore


async def hello(server: NativeServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(wire.PREAMBLE + wire.request(1, "hello", {"version": wire.VERSION}))
    frames = wire.FrameReader()
    while not (got := frames.feed(await reader.read(1 << 16))):
        pass
    assert got[0][0] == wire.REPLY
    return reader, writer


def tasks_named(prefix: str) -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith(prefix) and not t.done()]


async def wait_for(condition: Any, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


async def test_a_lost_connection_leaves_no_task_and_no_session_behind() -> None:
    async with Broker(SqliteStore(None, durability="memory"), monitor=False) as broker:
        await broker.create_queue("q")
        server = NativeServer(broker, port=0)
        await server.start()
        try:
            _, writer = await hello(server)
            # A long-polling receive in flight and a subscription: both tasks.
            writer.write(wire.request(2, "receive", {"queue": "q", "wait": 60}))
            writer.write(wire.request(3, "consume", {"queue": "q", "prefetch": 4}))

            async def running() -> bool:
                return bool(tasks_named("native connection")) and bool(tasks_named("subscriptions"))

            await wait_for(running)
            [conn] = server.connections
            writer.close()
            await conn.closed
            assert tasks_named("native connection") == []
            assert tasks_named("subscriptions") == []
            assert await broker.sessions() == []
        finally:
            await server.stop()
        assert len(server.endings) == 0


async def test_stop_waits_for_the_session_of_a_connection_lost_before_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with Broker(SqliteStore(None, durability="memory"), monitor=False) as broker:
        await broker.create_queue("q")
        server = NativeServer(broker, port=0)
        await server.start()
        closing, release = asyncio.Event(), asyncio.Event()
        closed: list[str] = []
        close_session = broker.close_session

        async def slow_close(session: str) -> None:
            closing.set()
            await release.wait()
            await close_session(session)
            closed.append(session)

        monkeypatch.setattr(broker, "close_session", slow_close)
        try:
            reader, writer = await hello(server)
            writer.write(wire.request(2, "receive", {"queue": "q"}))
            frames = wire.FrameReader()
            while not (got := frames.feed(await reader.read(1 << 16))):
                pass
            assert got[0][:2] == [wire.REPLY, 2]
            [session] = [s.id for s in await broker.sessions()]
            writer.close()
            await closing.wait()  # lost: its ending is closing the session
            assert server.connections == set()
            asyncio.get_running_loop().call_later(0.2, release.set)
        finally:
            await server.stop()
        # stop returned after the session of the connection lost before it closed.
        assert closed == [session]
