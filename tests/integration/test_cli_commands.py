"""The ``conveyor`` command as a subprocess against a real broker: send,
receive --ack, queues, stats, dlq list/redrive, purge, create; output, exit
codes, and clear messages (no traceback) for bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from queue import Queue

import pytest
from integration_support import ServerProcess, child_env, conveyor_cli, free_port

import conveyor

ID = re.compile(r"^[0-9a-f]{16}$")


def run_ok(*args: str, url: str | None) -> subprocess.CompletedProcess[str]:
    done = conveyor_cli(*args, url=url)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def assert_refused(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    """A non-zero exit with a one-line explanation naming ``needles``."""
    assert done.returncode != 0, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    message = done.stderr.strip()
    assert message, "no message on stderr"
    for needle in needles:
        assert needle in message, (needle, message)


def table(stdout: str) -> dict[str, dict[str, str]]:
    """A printed table as {first column: {header: cell}}."""
    header, *rows = (line.split() for line in stdout.strip().splitlines())
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


def test_create_send_receive_ack(server: ServerProcess, queue: str) -> None:
    url = server.url
    created = json.loads(
        run_ok("create", queue, "--set", "max_attempts=3", "--set", "visibility_timeout=45",
               url=url).stdout
    )  # fmt: skip
    assert (created["name"], created["max_attempts"], created["visibility_timeout"]) == (
        queue,
        3,
        45,
    )

    sent = run_ok("send", queue, '{"pizza": "margherita"}', "--priority", "9", url=url)
    first_id = sent.stdout.strip()
    assert ID.match(first_id), sent.stdout
    low = run_ok("send", queue, "plain text", url=url).stdout.strip()
    grouped = run_ok("send", queue, "g", "--group", "g1", "--dedup-key", "k1", url=url)
    grouped_id = grouped.stdout.strip()
    dup = run_ok("send", queue, "g again", "--dedup-key", "k1", url=url)
    assert dup.stdout.strip() == f"{grouped_id} (duplicate)"
    run_ok("send", queue, "later", "--delay", "60", url=url)

    with conveyor.Client(url, timeout=10) as client:
        s = client.stats(queue)
        assert (s.ready, s.scheduled) == (3, 1)

    got = run_ok("receive", queue, "--max", "10", "--ack", url=url)
    lines = [json.loads(line) for line in got.stdout.splitlines()]
    assert [m["id"] for m in lines] == [first_id, low, grouped_id]
    assert lines[0]["body"] == '{"pizza": "margherita"}'
    assert lines[1]["body"] == "plain text"
    assert all(m["attempts"] == 1 and isinstance(m["token"], int) for m in lines)

    empty = run_ok("receive", queue, "--wait", "0.2", url=url)
    assert empty.stdout == "" and "no message" in empty.stderr

    with conveyor.Client(url, timeout=10) as client:
        s = client.stats(queue)
        assert (s.ready, s.leased, s.acked_total) == (0, 0, 3)


def test_receive_without_ack_leaves_the_lease(server: ServerProcess, queue: str) -> None:
    with conveyor.Client(server.url, timeout=10) as client:
        client.create_queue(queue, visibility_timeout=60)
        client.enqueue(queue, "held")
    (line,) = run_ok("receive", queue, url=server.url).stdout.splitlines()
    assert json.loads(line)["body"] == "held"
    # The CLI's connection ended: its session closed and the lease was released.
    with conveyor.Client(server.url, timeout=10) as client:
        (again,) = client.receive(queue, wait=5)
        assert again.attempts == 2
        again.ack()


def test_queues_and_stats_tables(server: ServerProcess, queue: str) -> None:
    with conveyor.Client(server.url, timeout=10) as client:
        client.create_queue(queue)
        client.enqueue_many(queue, ["a", "b", "c"])
        client.enqueue(queue, "later", delay=60)
        (d,) = client.receive(queue)
        d.ack()

    queues = table(run_ok("queues", url=server.url).stdout)
    assert list(next(iter(queues.values()))) == [
        "QUEUE", "READY", "SCHEDULED", "LEASED", "DEAD", "CONSUMERS", "OLDEST",
    ]  # fmt: skip
    row = queues[queue]
    assert (row["READY"], row["SCHEDULED"], row["LEASED"], row["DEAD"]) == ("2", "1", "0", "0")

    one = table(run_ok("stats", queue, url=server.url).stdout)
    assert set(one) == {queue}
    assert (one[queue]["READY"], one[queue]["ENQUEUED"], one[queue]["ACKED"]) == ("2", "4", "1")
    every = table(run_ok("stats", url=server.url).stdout)
    assert queue in every


def test_dead_letters_redrive_and_purge(server: ServerProcess, queue: str) -> None:
    with conveyor.Client(server.url, timeout=10) as client:
        client.create_queue(queue, max_attempts=1)
        ids = [r.id for r in client.enqueue_many(queue, ["x", "y"])]
        for d in client.receive(queue, max=2):
            d.nack(error="kaput")

    listed = run_ok("dlq", "list", queue, "--json", url=server.url).stdout.splitlines()
    dead = [json.loads(line) for line in listed]
    assert [m["id"] for m in dead] == ids
    assert [m["body"] for m in dead] == ["x", "y"]
    assert all(m["error"] == "kaput" and m["reason"] for m in dead)
    limited = run_ok("dlq", "list", queue, "--json", "--limit", "1", url=server.url)
    assert len(limited.stdout.splitlines()) == 1

    assert run_ok("dlq", "redrive", queue, url=server.url).stdout.strip() == "redriven: 2"
    assert run_ok("dlq", "list", queue, url=server.url).stdout == ""
    assert run_ok("purge", queue, url=server.url).stdout.strip() == "purged: 2"
    with conveyor.Client(server.url, timeout=10) as client:
        assert client.stats(queue).ready == 0


def test_the_url_defaults_to_conveyor_url(server: ServerProcess, queue: str) -> None:
    env = child_env(CONVEYOR_URL=server.url)
    done = conveyor_cli("create", queue, url=None, env=env)
    assert done.returncode == 0, done.stderr
    done = conveyor_cli("send", queue, "via env", url=None, env=env)
    assert done.returncode == 0 and ID.match(done.stdout.strip()), done.stderr


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["send", "{queue}-missing", "x"], ["queue_not_found", "-missing"]),
        (["receive", "{queue}-missing"], ["queue_not_found"]),
        (["dlq", "list", "{queue}-missing"], ["queue_not_found"]),
        (["purge", "{queue}-missing"], ["queue_not_found"]),
        (["stats", "{queue}-missing"], ["queue_not_found"]),
        (["send", "{queue}", "x", "--priority", "12"], ["invalid_argument", "priority"]),
        (["send", "{queue}", "x", "--priority", "high"], ["--priority", "invalid int"]),
        (["receive", "{queue}", "--max", "0"], ["invalid_argument", "max"]),
        (["create", "{queue}-new", "--set", "max_attempts=x"], ["invalid_argument", "max_att"]),
        (["create", "{queue}-new", "--set", "nonsense"], ["invalid_argument", "nonsense"]),
        (["create", "{queue}-new", "--set", "bogus=1"], ["invalid_argument", "bogus"]),
        (["create", "bad name!"], ["invalid_argument", "queue name"]),
        (["dlq", "fix", "{queue}"], ["invalid choice"]),
    ],
)
def test_bad_input_gets_a_clear_message_and_a_failing_exit(
    server: ServerProcess, queue: str, args: list[str], needles: list[str]
) -> None:
    with conveyor.Client(server.url, timeout=10) as client:
        client.create_queue(queue)
    done = conveyor_cli(*(a.format(queue=queue) for a in args), url=server.url)
    assert_refused(done, *needles)
    with conveyor.Client(server.url, timeout=10) as client:
        assert client.stats(queue).enqueued_total == 0
        assert f"{queue}-new" not in {q.name for q in client.queues()}


def test_an_unreachable_broker_is_a_clear_error() -> None:
    port = free_port()
    done = conveyor_cli(
        "queues", "--timeout", "0.5", url=f"conveyor://127.0.0.1:{port}", timeout=30
    )
    assert_refused(done, "error: no broker at ", f"127.0.0.1:{port}")
    done = conveyor_cli("queues", url="nonsense://x")
    assert_refused(done, "unsupported broker URL")


def test_stats_watch_refreshes_until_interrupted(server: ServerProcess, queue: str) -> None:
    with conveyor.Client(server.url, timeout=10) as client:
        client.create_queue(queue)
        client.enqueue_many(queue, ["a", "b"])
        watch = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "stats", queue, "--watch", "--interval", "0.2",
             "--url", server.url],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
        )  # fmt: skip
        assert watch.stdout is not None
        lines: Queue[str] = Queue()
        reader = threading.Thread(target=lambda: [lines.put(line) for line in watch.stdout])
        reader.start()
        rows: list[list[str]] = []

        def until_ready_is(ready: str) -> None:
            """Read rows until one shows ``ready`` (the READY column)."""
            while not rows or rows[-1][1] != ready:
                line = lines.get(timeout=30)  # queue.Empty: no such refresh came
                if line.startswith(queue):
                    rows.append(line.split())

        try:
            until_ready_is("2")
            client.enqueue_many(queue, ["c"] * 40)
            until_ready_is("42")  # refreshed by itself
        finally:
            os.kill(watch.pid, signal.SIGINT)
            watch.wait(10)
            reader.join(10)
            with watch:  # closes its pipes
                err = watch.stderr.read() if watch.stderr is not None else ""
    assert watch.returncode == 130, (watch.returncode, err)
    assert "Traceback" not in err, err
    assert rows[0][1] == "2", rows


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor", "serve", "--log-level", "info", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env(),
    )


def test_serve_refuses_with_a_clear_message(server: ServerProcess, tmp_path: Path) -> None:
    port, http = str(free_port()), str(free_port())
    locked = serve("--data", str(server.data), "--port", port, "--http-port", http)
    assert locked.returncode == 2
    assert "in use by another broker" in locked.stderr, locked.stderr
    taken = serve("--data", str(tmp_path / "a"), "--port", str(server.port), "--http-port", http)
    assert taken.returncode == 2 and "address already in use" in taken.stderr, taken.stderr
    taken = serve("--data", str(tmp_path / "b"), "--port", port, "--http-port",
                  str(server.http_port))  # fmt: skip
    assert taken.returncode == 2 and "address already in use" in taken.stderr, taken.stderr
    bad = serve("--store", "bogus://x", "--port", port, "--http-port", http)
    assert bad.returncode == 2 and "unsupported store URL" in bad.stderr, bad.stderr
    short = serve("--heartbeat", "5", "--session-timeout", "6", "--port", port)
    assert short.returncode == 2 and "at least twice --heartbeat" in short.stderr, short.stderr
    zero = serve("--heartbeat", "0", "--port", port)
    assert zero.returncode == 2 and "positive number of seconds" in zero.stderr, zero.stderr
    for done in (locked, taken, bad, short, zero):
        assert "Traceback" not in done.stderr, done.stderr
    assert server.alive()
    with conveyor.Client(server.url, timeout=10) as client:
        client.queues()  # the running broker did not notice
