"""A consumer whose connection is cut while it holds deliveries (its process
killed with SIGKILL, or its socket closed): the server ends its session and
releases its leases at once, long before their visibility timeout, and
another consumer gets the messages. Nothing is lost.

The server's session timeout is a minute, and every wait for the leases to
come back gives up long before (RELEASED_WITHIN): only the closed connection
can release them in time, not a session that timed out."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from integration_support import RawConnection, ServerProcess, child_env, wait_until

import conveyor
from conveyor.core import wire

CHILD = Path(__file__).with_name("consumer_child.py")
VISIBILITY = 120.0  # far beyond the test: only a released session explains a redelivery
SESSION_TIMEOUT = 60.0
SERVE_ARGS = ("--session-timeout", str(SESSION_TIMEOUT))
RELEASED_WITHIN = 20.0  # far under SESSION_TIMEOUT: what only a missed release reaches
TOTAL = 60
HELD = 10


def start_doomed_consumer(
    server: ServerProcess, queue: str, mode: str, tmp_path: Path
) -> tuple[subprocess.Popen[bytes], Path]:
    out = tmp_path / f"{mode}-child.out"
    with out.open("wb") as sink:
        child = subprocess.Popen(
            [sys.executable, str(CHILD), server.url, queue, mode, str(HELD)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=child_env(),
        )
    return child, out


def held_by_child(out: Path) -> dict[str, int]:
    """Ids the child printed (a torn last line is not counted), with attempts."""
    lines = out.read_text().split("\n")[:-1]
    return {f[1]: int(f[2]) for f in (line.split() for line in lines) if f[0] == "got"}


def kill(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        os.kill(child.pid, signal.SIGKILL)
    child.wait(10)


@pytest.mark.chaos
@pytest.mark.parametrize("mode", ["consume", "receive"])
async def test_killed_consumer_leases_go_to_a_live_consumer(
    server: ServerProcess, queue: str, mode: str, tmp_path: Path
) -> None:
    async with conveyor.AsyncClient(server.url, name="survivor", timeout=10) as client:
        await client.create_queue(queue, visibility_timeout=VISIBILITY)
        sent = {r.id for r in await client.enqueue_many(queue, [f"job {i}" for i in range(TOTAL)])}

        child, out = start_doomed_consumer(server, queue, mode, tmp_path)
        try:

            async def child_holds_its_share() -> None:
                while (await client.stats(queue)).leased < HELD:
                    assert child.poll() is None, out.read_text()
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(child_holds_its_share(), 20)

            # A live consumer takes the rest meanwhile, and waits for more.
            acked: dict[str, int] = {}

            async def survive() -> None:
                async for d in client.consume(queue, prefetch=20):
                    assert d.id not in acked, f"{d.id} delivered again after its ack"
                    await d.ack()
                    acked[d.id] = d.attempts
                    if len(acked) == TOTAL:
                        return

            survivor = asyncio.create_task(survive())
            try:
                await wait_for_count(lambda: len(acked), TOTAL - HELD, 20, "the unheld messages")
                await asyncio.sleep(0.3)
                assert len(acked) == TOTAL - HELD, "a held message was delivered twice"
                held = set(held_by_child(out)) if mode == "receive" else None
                kill(child)
                # Released when the connection dropped, not after VISIBILITY
                # nor after the session timeout.
                await asyncio.wait_for(survivor, RELEASED_WITHIN)
            finally:
                survivor.cancel()
        finally:
            kill(child)

        assert child.returncode == -signal.SIGKILL
        assert set(acked) == sent, "messages lost"
        redelivered = {i for i, attempts in acked.items() if attempts == 2}
        assert len(redelivered) == HELD, acked
        if held is not None:
            assert redelivered == held
        stats = await client.stats(queue)
        assert (stats.ready, stats.leased, stats.acked_total) == (0, 0, TOTAL)
        assert stats.lease_expired_total >= HELD


async def wait_for_count(count: Callable[[], int], target: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while count() < target:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {count()} of {target}")
        await asyncio.sleep(0.05)


def test_a_closed_socket_releases_its_pushed_deliveries(server: ServerProcess, queue: str) -> None:
    with conveyor.Client(server.url, timeout=10) as client:
        client.create_queue(queue, visibility_timeout=VISIBILITY)
        sent = [r.id for r in client.enqueue_many(queue, [f"m{i}" for i in range(20)])]

        conn = RawConnection(server.port)
        conn.hello()
        conn.request("consume", {"queue": queue, "prefetch": 5, "sub": 7})
        pushed: list[dict[str, object]] = []
        while len(pushed) < 5:
            f = conn.read_frame()
            assert f is not None
            if f[0] == wire.PUSH:
                assert f[1] == 7
                pushed.extend(f[2])
        assert [d["id"] for d in pushed] == sent[:5]
        assert client.stats(queue).leased == 5
        conn.close()  # mid-consume, nothing settled

        wait_until(
            lambda: client.stats(queue).leased == 0, RELEASED_WITHIN, "the leases to be released"
        )
        got = client.receive(queue, max=100, wait=1)
        assert [d.id for d in got] == sent  # released ones are first again, in order
        assert [d.attempts for d in got] == [2] * 5 + [1] * 15
        for d in got:
            d.ack()
        assert client.stats(queue).acked_total == 20
