"""``conveyor serve`` killed with SIGKILL (or stopped with SIGTERM) under a
producer's load, then started again on the same data directory (and ports):
every enqueue the producer saw acknowledged is there, none twice, and the
producer's client reconnects on its own and carries on. Leases of the dead
broker's consumers come back at restart; SIGTERM does not wait for long polls; a
frozen broker (SIGSTOP) is given up by its silence and reconnected to later."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from integration_support import Http, StartServer, child_env, wait_until

import conveyor

CHILD = Path(__file__).with_name("producer_child.py")
QUEUE = "orders"
KILLS = 2
POLL = 60.0  # the long polls of the SIGTERM test: the most a receive may wait


def acknowledged(out: Path) -> dict[str, int]:
    """Ids the producer was told are stored, with their sequence numbers."""
    lines = out.read_text().split("\n")[:-1]  # the unterminated tail was not acknowledged
    assert lines and lines[0] == "ready", lines[:3]
    acked: dict[str, int] = {}
    for line in lines[1:]:
        message_id, seq = line.split(" ")
        assert message_id not in acked, f"the same id acknowledged twice: {message_id}"
        acked[message_id] = int(seq)
    return acked


@pytest.mark.chaos
@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_acknowledged_enqueues_survive_a_killed_broker(
    start_server: StartServer, tmp_path: Path, how: str
) -> None:
    """SIGKILL: no shutdown at all. SIGTERM: the clean shutdown, which must
    also end with exit code 0 while producers are connected."""
    rng = random.Random()
    seed = rng.randrange(1 << 32)
    rng.seed(seed)
    server = start_server()  # durability fsync, the default
    out, err = tmp_path / "producer.out", tmp_path / "producer.err"
    with out.open("wb") as sink, err.open("wb") as errors:
        producer = subprocess.Popen(
            [sys.executable, str(CHILD), server.url, QUEUE],
            stdout=sink,
            stderr=errors,
            env=child_env(),
        )
    history = []
    try:
        wait_until(lambda: out.read_bytes().startswith(b"ready\n"), 20, "the producer")
        for round_ in range(KILLS):
            before = len(acknowledged(out))
            time.sleep(rng.uniform(0.5, 1.5))
            assert producer.poll() is None, err.read_text()
            at_kill = len(acknowledged(out))
            assert at_kill > before, f"the producer made no progress (seed {seed})"
            if how == "SIGKILL":
                server.kill()
                assert server.proc is not None and server.proc.returncode == -signal.SIGKILL
            else:
                # Exit code 0: it ended by itself (stop() kills after 20 s).
                assert server.stop() == 0, server.log_text()
            time.sleep(rng.uniform(0.1, 0.8))  # the producer retries against nothing
            restarted = time.monotonic()
            server.start()  # same data directory, same ports
            restart_took = time.monotonic() - restarted
            # The producer's client reconnects and goes on (counted from now:
            # during a clean shutdown the old process still answered a while).
            at_restart = len(acknowledged(out))
            wait_until(
                lambda n=at_restart: len(acknowledged(out)) > n + 20,
                20,
                f"the producer to resume after restart {round_ + 1}",
            )
            history.append((at_kill, len(acknowledged(out)), round(restart_took, 2)))
    finally:
        if producer.poll() is None:
            os.kill(producer.pid, signal.SIGKILL)
        producer.wait(10)
    acked = acknowledged(out)
    where = f"({how}, seed {seed}; at each kill: acknowledged, after, restart s: {history})"

    with conveyor.Client(server.url, timeout=10) as client:
        stats = client.stats(QUEUE)
        found: dict[str, int] = {}
        while True:
            got = client.receive(QUEUE, max=1000, visibility=300)  # leased, not acked
            if not got:
                break
            for d in got:
                assert d.id not in found, f"{d.id} delivered twice {where}"
                body = d.body.decode()
                assert body.startswith("seq:"), f"torn body {body!r} {where}"
                found[d.id] = int(body[4:])

    lost = sorted(set(acked) - set(found))
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged messages lost {where}: {lost[:5]}"
    swapped = [i for i, seq in acked.items() if found[i] != seq]
    assert not swapped, f"messages with another body {where}: {swapped[:5]}"
    twice = [seq for seq, n in Counter(found.values()).items() if n > 1]
    assert not twice, f"messages stored twice (a retried enqueue) {where}: {twice[:5]}"
    # Anything beyond the acknowledged ones was committed but its reply lost.
    assert stats.ready == len(found) == stats.enqueued_total, (stats, len(found), where)
    assert len(found) - len(acked) <= 4 * 5, where  # at most the last batch of each task


@pytest.mark.chaos
def test_leases_held_when_the_broker_died_are_released_at_restart(
    start_server: StartServer,
) -> None:
    server = start_server()
    with conveyor.Client(server.url, name="holder", timeout=30) as holder:
        holder.create_queue(QUEUE, visibility_timeout=300)
        sent = [r.id for r in holder.enqueue_many(QUEUE, [f"job {i}" for i in range(10)])]
        held = holder.receive(QUEUE, max=4)
        assert [d.id for d in held] == sent[:4]
        server.kill()
        server.start()
        with conveyor.Client(server.url, name="after", timeout=10) as after:
            # Released by the restart itself, not after the 300 s visibility.
            stats = after.stats(QUEUE)
            assert (stats.ready, stats.leased) == (10, 0), stats
            got = after.receive(QUEUE, max=10)
            assert [d.id for d in got] == sent
            assert [d.attempts for d in got] == [2] * 4 + [1] * 6
            # The holder's client reconnected by itself; its old tokens are fenced.
            for d in held:
                with pytest.raises(conveyor.LeaseLost):
                    d.ack()
            for d in got:
                d.ack()
            assert after.stats(QUEUE).acked_total == 10


def test_sigterm_ends_long_polls_and_exits_promptly(start_server: StartServer) -> None:
    server = start_server()
    http = Http(server.http_url)
    assert http.put(f"/v1/queues/{QUEUE}").status == 200
    outcomes: dict[str, object] = {}

    def http_poll() -> None:
        try:
            outcomes["http"] = http.post(f"/v1/queues/{QUEUE}/receive", {"wait": POLL})
        except OSError as exc:  # the connection closed without a reply
            outcomes["http"] = exc

    def native_poll() -> None:
        with conveyor.Client(server.url, timeout=1) as client:
            try:
                outcomes["native"] = client.receive(QUEUE, wait=POLL)
            except conveyor.ConveyorError as exc:
                outcomes["native"] = exc

    threads = [threading.Thread(target=http_poll), threading.Thread(target=native_poll)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # both are waiting in the broker now
    # Exit code 0 within half the polls' wait: it ended them, not waited them
    # out (stop() kills it, with another exit code, after its timeout).
    code = server.stop(timeout=POLL / 2)
    for thread in threads:
        thread.join(15)
    assert code == 0, f"SIGTERM did not end the long polls: {server.log_text()}"
    assert set(outcomes) == {"http", "native"}, outcomes
    server.start()  # and it comes back clean
    with conveyor.Client(server.url, timeout=10) as client:
        assert client.stats(QUEUE).leased == 0


class SetOnLog(logging.Handler):
    """Sets an event when a record with ``text`` in its message is logged
    (on the event loop's thread, where the client logs)."""

    def __init__(self, event: asyncio.Event, text: str) -> None:
        super().__init__()
        self.event, self.text = event, text

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


@pytest.mark.chaos
async def test_a_frozen_broker_is_noticed_by_its_silence_and_the_client_comes_back(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker that stops answering (SIGSTOP) without closing the socket is
    given up after three of its heartbeats of silence; once it runs again the
    client reconnects by itself and its calls go through."""
    server = start_server("--heartbeat", "0.5", "--session-timeout", "1")
    caplog.set_level(logging.INFO, logger="conveyor.client")
    async with conveyor.AsyncClient(server.url, timeout=30) as client:
        await client.create_queue(QUEUE)
        noticed = asyncio.Event()
        watcher = SetOnLog(noticed, "silent")
        logging.getLogger("conveyor.client").addHandler(watcher)
        os.kill(server.pid, signal.SIGSTOP)
        try:
            await asyncio.wait_for(noticed.wait(), 30)  # after 3 heartbeats: 1.5 s
        finally:
            os.kill(server.pid, signal.SIGCONT)
            logging.getLogger("conveyor.client").removeHandler(watcher)
        sent = await client.enqueue(QUEUE, "after the freeze")
        assert (await client.stats(QUEUE)).ready == 1, sent
