"""Consumers heal themselves (client/native.py, "Reconnecting"; issue 13).

A bare consume loop, async or sync, in a process of its own, idle when its
broker is SIGKILLed or stopped with SIGINT: once the broker is started again
on the same data and ports, the loop gets the next message within 5 s (the
bound the issue sets), without a call of its own to wake it, and it logged
the loss and the return.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration_support import ServerProcess, StartServer, child_env, wait_until

import conveyor

# The bound issue 13 sets between a broker being back and the next message consumed.
BACK_WITHIN = 5.0

# argv: url, queue, output file. Writes "ready", then one line per delivery.
ASYNC_LOOP = """
import asyncio, logging, sys
import conveyor

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
url, queue, out = sys.argv[1:4]

async def main():
    async with conveyor.AsyncClient(url, name="async-loop") as client:
        await client.create_queue(queue)
        with open(out, "a") as sink:
            sink.write("ready\\n"); sink.flush()
            async for delivery in client.consume(queue):
                sink.write(delivery.text() + "\\n"); sink.flush()
                await delivery.ack()

asyncio.run(main())
"""

SYNC_LOOP = """
import logging, sys
import conveyor

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
url, queue, out = sys.argv[1:4]

with conveyor.Client(url, name="sync-loop") as client:
    client.create_queue(queue)
    with open(out, "a") as sink:
        sink.write("ready\\n"); sink.flush()
        for delivery in client.consume(queue):
            sink.write(delivery.text() + "\\n"); sink.flush()
            delivery.ack()
"""

LOOPS = {"async": ASYNC_LOOP, "sync": SYNC_LOOP}


class Loop:
    """A consume loop in a child process, what it consumed in ``out``."""

    def __init__(self, directory: Path, kind: str, url: str, queue: str) -> None:
        self.out = directory / f"{kind}.out"
        self.log_path = directory / f"{kind}.log"
        self.out.touch()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", LOOPS[kind], url, queue, str(self.out)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(),
            )

    def lines(self) -> list[str]:
        return self.out.read_text().split("\n")[:-1]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def loops() -> Iterator[list[Loop]]:
    started: list[Loop] = []
    try:
        yield started
    finally:
        for loop in started:
            loop.stop()


def stop_server(server: ServerProcess, how: str) -> None:
    if how == "SIGKILL":
        server.kill()
    else:  # Ctrl-C: the clean shutdown
        os.kill(server.pid, signal.SIGINT)
        assert server.proc is not None and server.proc.wait(20) == 0, server.log_text()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
@pytest.mark.parametrize("kind", ["async", "sync"])
def test_an_idle_consume_loop_comes_back_after_its_broker_restarts(
    kind: str, how: str, start_server: StartServer, tmp_path: Path, loops: list[Loop]
) -> None:
    server = start_server()
    loop = Loop(tmp_path, kind, server.url, "jobs")
    loops.append(loop)
    wait_until(lambda: loop.lines() == ["ready"] or not loop.alive(), 20, "the loop to start")
    with conveyor.Client(server.url) as client:
        client.enqueue("jobs", "before")
        wait_until(lambda: "before" in loop.lines() or not loop.alive(), 20, "the first message")
        # Idle: its ack is in, not on the wire when the broker goes (an ack
        # cut off by a SIGKILL comes back LeaseLost after the restart).
        wait_until(lambda: client.stats("jobs").acked_total == 1, 20, "the first ack")
    assert loop.alive(), loop.log()

    stop_server(server, how)
    time.sleep(1.0)  # the loop tries against nothing meanwhile
    server.start()  # the same ports and data
    back = time.monotonic()
    with conveyor.Client(server.url) as client:
        client.enqueue("jobs", "after")
    wait_until(lambda: "after" in loop.lines() or not loop.alive(), 30, "the next message")
    took = time.monotonic() - back
    assert loop.alive(), loop.log()
    assert took < BACK_WITHIN, f"consumed {took:.1f}s after the broker was back:\n{loop.log()}"
    print(f"\n{kind} loop, {how}: consumed {took:.2f}s after the broker was back")
    assert loop.lines() == ["ready", "before", "after"]
    log = loop.log()
    assert "INFO conveyor.client connection lost" in log, log
    assert f"INFO conveyor.client reconnected to 127.0.0.1:{server.port}" in log, log
    assert "Traceback" not in log, log


@pytest.mark.slow
def test_a_consumer_down_for_long_warns_once_and_comes_back(
    start_server: StartServer, tmp_path: Path, loops: list[Loop]
) -> None:
    server = start_server()
    loop = Loop(tmp_path, "async", server.url, "jobs")
    loops.append(loop)
    wait_until(lambda: loop.lines() == ["ready"] or not loop.alive(), 20, "the loop to start")
    server.kill()
    wait_until(lambda: "WARNING" in loop.log() or not loop.alive(), 30, "the warning")
    assert loop.alive(), loop.log()
    server.start()
    with conveyor.Client(server.url) as client:
        client.enqueue("jobs", "after")
    wait_until(lambda: "after" in loop.lines() or not loop.alive(), 30, "the next message")
    log = loop.log()
    (warning,) = [line for line in log.splitlines() if line.startswith("WARNING")]
    assert warning.startswith("WARNING conveyor.client no broker for 1"), warning
    assert f"no broker at 127.0.0.1:{server.port} (connection refused)" in warning, warning
    assert log.count("INFO conveyor.client reconnecting: no broker at") >= 3, log
