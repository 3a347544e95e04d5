"""The ``conveyor`` command as a person meets it on the first day, through
its entry point in a subprocess: --version, help that says every default,
one-line errors, a broker that is not there, bodies from standard input or
a file, ``configure``, the dead letters' table, and ``conveyor worker`` given
a task instead of an app."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from integration_support import ServerProcess, child_env, conveyor_cli, free_port

import conveyor
from conveyor.cli import parser

CLIENT_COMMANDS = ("send", "receive", "queues", "stats", "dlq", "purge", "create", "configure")


def run_ok(
    *args: str, url: str | None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    done = cli(*args, url=url, stdin=stdin)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def cli(
    *args: str, url: str | None, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "conveyor", *args]
    if url is not None:
        command += ["--url", url]
    return subprocess.run(
        command, input=stdin, capture_output=True, text=True, timeout=60,
        env=child_env(COLUMNS="200"), cwd=cwd, check=False,
    )  # fmt: skip


def subcommands() -> dict[str, object]:
    sub = next(a for a in parser()._actions if a.dest == "command")
    return dict(sub.choices)  # type: ignore[arg-type]


# -- the command itself ---------------------------------------------------------------


def test_version() -> None:
    done = cli("--version", url=None)
    assert (done.returncode, done.stdout) == (0, f"conveyor {conveyor.__version__}\n")


def test_every_option_of_every_command_says_its_default() -> None:
    missing = []
    for name, command in subcommands().items():
        assert command.description, f"conveyor {name} has no description"  # type: ignore[attr-defined]
        for action in command._actions:  # type: ignore[attr-defined]
            if not action.option_strings or action.nargs == 0 or action.required:
                continue  # positionals, flags (--ack, --help), required options
            if "default" not in (action.help or ""):
                missing.append(f"{name} {action.option_strings[0]}")
    assert missing == []


@pytest.mark.parametrize(
    ("command", "line"),
    [
        ("send", "--priority PRIORITY 0 to 9, higher first (default 0)"),
        ("receive", "--wait WAIT seconds to wait for a first message (default 0: answer at once)"),
        ("serve", "--durability {fsync,os,memory} what a reply survives: fsync power loss,"
                  " os a killed broker, memory nothing (default fsync)"),
        ("worker", "--concurrency CONCURRENCY tasks run at once (default 4)"),
        ("dlq", "--limit LIMIT dead letters to list at most (default 100)"),
        ("stats", "--interval INTERVAL seconds between refreshes with --watch (default 1)"),
    ],
)  # fmt: skip
def test_help_prints_the_defaults(command: str, line: str) -> None:
    done = cli(command, "--help", url=None)
    assert done.returncode == 0
    assert line in " ".join(done.stdout.split()), done.stdout  # however argparse wraps it


def test_every_command_that_talks_to_a_broker_takes_url_token_and_timeout() -> None:
    commands = subcommands()
    for name in CLIENT_COMMANDS:
        options = {o for a in commands[name]._actions for o in a.option_strings}  # type: ignore[attr-defined]
        assert {"--url", "--token", "--timeout"} <= options, name
    worker = {o for a in commands["worker"]._actions for o in a.option_strings}  # type: ignore[attr-defined]
    assert {"--url", "--token"} <= worker


# -- failures: fast, one line, saying what to do ----------------------------------------


def test_no_broker_there_fails_within_about_a_second_with_one_line() -> None:
    port = free_port()
    started = time.monotonic()
    done = cli("queues", url=f"conveyor://127.0.0.1:{port}")
    elapsed = time.monotonic() - started
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        f"error: no broker at 127.0.0.1:{port} (connection refused):"
        " is `conveyor serve` running there?\n"
    )
    # The issue's bound: about 1 s to give up (the connect timeout), where it
    # took 9.7 s; the rest is the interpreter starting, on a loaded machine.
    assert elapsed < 4.0, elapsed


def test_errors_the_broker_answers_are_one_line_with_their_code(
    server: ServerProcess, queue: str
) -> None:
    done = cli("send", queue, "x", url=server.url)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"error: queue_not_found: no queue named {queue!r}\n"
    run_ok("create", queue, url=server.url)
    done = cli("send", queue, "x", "--priority", "42", url=server.url)
    assert done.stderr == (
        "error: invalid_argument: priority must be at least 0 and at most 9, not 42\n"
    )


def test_a_bad_url_is_one_line(tmp_path: Path) -> None:
    done = cli("queues", url="nonsense://x")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(
        "error: invalid_argument: unsupported broker URL 'nonsense://x'"
    ), done.stderr
    no_ca = cli("queues", url=f"conveyors://127.0.0.1:{free_port()}?ca={tmp_path}/missing.pem")
    assert no_ca.returncode == 1
    assert no_ca.stderr.count("\n") == 1 and no_ca.stderr.startswith("error: "), no_ca.stderr


# -- send: bodies from standard input or a file ----------------------------------------


def test_send_reads_the_body_from_standard_input_or_a_file(
    server: ServerProcess, queue: str, tmp_path: Path
) -> None:
    run_ok("create", queue, url=server.url)
    from_stdin = run_ok("send", queue, "-", url=server.url, stdin='{"pizza": "margherita"}\n')
    body_file = tmp_path / "order.bin"
    body_file.write_bytes(b"\x00\xffbinary\n")
    from_file = run_ok("send", queue, f"@{body_file}", url=server.url)
    as_text = run_ok("send", queue, "plain", url=server.url)
    with conveyor.Client(server.url, timeout=10) as client:
        got = {d.id: d.body for d in client.receive(queue, max=10)}
    assert got == {
        from_stdin.stdout.strip(): b'{"pizza": "margherita"}\n',
        from_file.stdout.strip(): b"\x00\xffbinary\n",
        as_text.stdout.strip(): b"plain",
    }


def test_send_from_a_file_that_cannot_be_read(tmp_path: Path) -> None:
    # Read before connecting: no broker is needed to say so.
    done = cli("send", "q", f"@{tmp_path}/missing.json", url=f"conveyor://127.0.0.1:{free_port()}")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        f"error: invalid_argument: cannot read the body from {tmp_path}/missing.json:"
        " No such file or directory\n"
    )


# -- create and configure ---------------------------------------------------------------


def test_configure_changes_settings_and_create_names_it(server: ServerProcess, queue: str) -> None:
    created = json.loads(run_ok("create", queue, "--set", "max_attempts=3", url=server.url).stdout)
    assert created["max_attempts"] == 3
    again = cli("create", queue, "--set", "max_attempts=5", url=server.url)
    assert (again.returncode, again.stdout) == (1, "")
    assert again.stderr == (
        f"error: queue_exists: queue '{queue}' exists with other settings; to change them:"
        f" conveyor configure {queue} --set max_attempts=5\n"
    )
    changed = run_ok("configure", queue, "--set", "max_attempts=5", "--set",
                     "visibility_timeout=12.5", url=server.url)  # fmt: skip
    config = json.loads(changed.stdout)
    assert (config["name"], config["max_attempts"], config["visibility_timeout"]) == (
        queue,
        5,
        12.5,
    )
    with conveyor.Client(server.url, timeout=10) as client:
        (stored,) = [q for q in client.queues() if q.name == queue]
        assert (stored.max_attempts, stored.visibility_timeout) == (5, 12.5)
    missing = cli("configure", f"{queue}-nope", "--set", "max_attempts=2", url=server.url)
    assert missing.stderr == f"error: queue_not_found: no queue named '{queue}-nope'\n"
    bare = cli("configure", queue, url=server.url)
    assert bare.returncode == 2 and "the following arguments are required: --set" in bare.stderr


# -- dlq list ----------------------------------------------------------------------------


def test_dlq_list_is_a_table_with_json_records_on_request(
    server: ServerProcess, queue: str
) -> None:
    traceback = (
        "Traceback (most recent call last):\n"
        '  File "/app/tasks.py", line 7, in bake\n'
        '    raise ValueError("no dough")\n'
        "ValueError: no dough\n"
    )
    with conveyor.Client(server.url, timeout=10) as client:
        client.create_queue(queue, max_attempts=1)
        first = client.enqueue(queue, '{"pizza": "margherita"}').id
        second = client.enqueue(queue, "line one\nline two " + "x" * 60).id
        (d,) = client.receive(queue)
        d.dead(traceback)
        (d,) = client.receive(queue)
        d.nack(error="kaput")
        dead = {m.id: m for m in client.dead_letters(queue)}

    def at(message_id: str) -> str:
        when = dead[message_id].dead_at
        assert when is not None
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(when))

    listed = run_ok("dlq", "list", queue, url=server.url)
    assert listed.stderr == ""
    assert listed.stdout.splitlines() == [
        "ID                ATTEMPTS  DEAD AT              BODY"
        "                                      REASON",
        f"{first}         1  {at(first)}  {{\"pizza\": \"margherita\"}}"
        "                   ValueError: no dough",
        f"{second}         1  {at(second)}  line one\\nline two xxxxxxxxxxxxxxxxxx..."
        "  failed on all 1 attempts: kaput",
    ]  # fmt: skip

    as_json = run_ok("dlq", "list", queue, "--json", url=server.url)
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [r["id"] for r in records] == [first, second]
    assert records[0]["reason"] == traceback and records[0]["body"] == '{"pizza": "margherita"}'
    assert (records[1]["reason"], records[1]["error"]) == ("failed on all 1 attempts", "kaput")

    run_ok("dlq", "redrive", queue, url=server.url)
    empty = run_ok("dlq", "list", queue, url=server.url)
    assert (empty.stdout, empty.stderr) == ("", f"(no dead letters in {queue})\n")


# -- conveyor worker: what it wants --------------------------------------------------


TASKS = """\
import conveyor

app = conveyor.App()

@app.task(queue="kitchen")
def bake(pizza: str) -> str:
    return pizza
"""


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("tasks:bake", "tasks:bake is a task, not an app: a worker runs every task of an app;"
                       " pass the app: conveyor worker tasks:app"),
        ("tasks:oven", "tasks:oven: tasks has no attribute 'oven' (the apps of tasks: tasks:app)"),
        ("tasks:conveyor", "tasks:conveyor: tasks:conveyor is a module, not a conveyor.App"
                           " (the apps of tasks: tasks:app)"),
        ("kitchen", "kitchen: no module named 'kitchen' here ({cwd}) or on PYTHONPATH"),
    ],
)  # fmt: skip
def test_worker_says_what_it_wants(tmp_path: Path, target: str, message: str) -> None:
    (tmp_path / "tasks.py").write_text(textwrap.dedent(TASKS))
    done = cli("worker", target, "--log-format", "json", url=None, cwd=tmp_path)
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    entry = json.loads(line)
    assert (entry["level"], entry["msg"]) == ("error", message.format(cwd=tmp_path))


def test_conveyor_url_and_timeout_are_still_honoured(server: ServerProcess, queue: str) -> None:
    env = child_env(CONVEYOR_URL=server.url)
    done = conveyor_cli("create", queue, "--timeout", "5", url=None, env=env)
    assert done.returncode == 0, done.stderr
    bad = conveyor_cli("queues", "--timeout", "0", url=None, env=env)
    assert bad.returncode == 2
    assert "argument --timeout: must be a positive number of seconds, not 0" in bad.stderr
