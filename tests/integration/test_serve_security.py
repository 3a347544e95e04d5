"""Safe by default: ``conveyor serve`` refuses an address other than
loopback without a token (unless --insecure), takes its token from
--token, --token-file or CONVEYOR_TOKEN and says which (never the token
itself), and clients give it with --token, CONVEYOR_TOKEN, ?token= or the
URL's userinfo; the HTTP API asks for the same token, /healthz excepted.

Every server here listens on 127.0.0.1. Addresses other than loopback are
tried with 192.0.2.1 (TEST-NET-1, never this machine's): the refusal comes
before any socket is bound, and once it is lifted the bind itself fails, so
nothing is ever exposed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from integration_support import Http, ServerProcess, child_env, free_port

import conveyor
from conveyor.server.service import is_loopback

TOKEN = "s3cret-token-of-the-test"
REFUSAL = (
    "refusing to serve on {host} without a token: anyone who can reach it could create,"
    " read, purge and delete queues. Set one with --token-file PATH, CONVEYOR_TOKEN or"
    " --token (clients give the same; see docs/security.md), or pass --insecure to serve"
    " without one"
)


def serve(
    *args: str, env: dict[str, str] | None = None, tmp: Path
) -> subprocess.CompletedProcess[str]:
    """``conveyor serve`` that is expected to end by itself (refused)."""
    return subprocess.run(
        [sys.executable, "-m", "conveyor", "serve", "--data", str(tmp / "data"),
         "--port", str(free_port()), "--http-port", "-1", "--log-format", "json", *args],
        capture_output=True, text=True, timeout=60, env=env or child_env(), check=False,
    )  # fmt: skip


def only_error(done: subprocess.CompletedProcess[str]) -> str:
    """The one log line of a refused start, as JSON: its message."""
    assert done.returncode == 2, (done.returncode, done.stderr)
    (line,) = done.stderr.splitlines()
    entry = json.loads(line)
    assert entry["level"] == "error", entry
    message: str = entry["msg"]
    return message


def without_token_env() -> dict[str, str]:
    env = child_env()
    env.pop("CONVEYOR_TOKEN", None)
    return env


# -- what loopback means ------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.168.1.20", False),
        ("10.0.0.1", False),
        ("example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_what_loopback_means(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# -- the refusal ----------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "broker.example.com"])
def test_an_address_other_than_loopback_without_a_token_is_refused(
    host: str, tmp_path: Path
) -> None:
    done = serve("--host", host, tmp=tmp_path, env=without_token_env())
    assert only_error(done) == REFUSAL.format(host=host)
    assert not (tmp_path / "data").exists()  # refused before the store was opened


def test_insecure_lifts_the_refusal(tmp_path: Path) -> None:
    done = serve("--host", "192.0.2.1", "--insecure", tmp=tmp_path, env=without_token_env())
    # Past the check: the address is not this machine's, so the bind fails.
    assert "cannot serve" in only_error(done)


@pytest.mark.parametrize("how", ["--token", "--token-file", "CONVEYOR_TOKEN"])
def test_a_token_lifts_the_refusal(how: str, tmp_path: Path) -> None:
    env = without_token_env()
    args: list[str] = []
    if how == "--token":
        args = ["--token", TOKEN]
    elif how == "--token-file":
        (tmp_path / "token").write_text(TOKEN + "\n")
        (tmp_path / "token").chmod(0o600)
        args = ["--token-file", str(tmp_path / "token")]
    else:
        env["CONVEYOR_TOKEN"] = TOKEN
    done = serve("--host", "192.0.2.1", *args, tmp=tmp_path, env=env)
    assert "cannot serve" in only_error(done)


# -- token files ---------------------------------------------------------------------


def test_token_files_that_cannot_serve(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    two = tmp_path / "two"
    two.write_text("one\ntwo\n")
    missing = tmp_path / "missing"
    cases = {
        f"--token-file {empty} is empty": ["--token-file", str(empty)],
        f"--token-file {two} holds more than one line": ["--token-file", str(two)],
        f"cannot read --token-file {missing}: No such file or directory": [
            "--token-file",
            str(missing),
        ],
        "--token and --token-file: give one of them": [
            "--token",
            "x",
            "--token-file",
            str(two),
        ],
        "--token is empty": ["--token", ""],
    }
    for message, args in cases.items():
        assert only_error(serve(*args, tmp=tmp_path)) == message


def test_a_token_file_other_users_may_read_is_warned_about(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o644)
    done = serve("--host", "192.0.2.1", "--token-file", str(token), tmp=tmp_path)
    warning, error = (json.loads(line) for line in done.stderr.splitlines())
    assert (warning["level"], warning["msg"]) == (
        "warning",
        f"--token-file {token} may be read by other users: chmod 600 {token}",
    )
    assert error["level"] == "error" and "cannot serve" in error["msg"]


# -- a broker with a token, and its clients -----------------------------------------------


def start(tmp_path: Path, *args: str, env: dict[str, str]) -> tuple[ServerProcess, str]:
    """A broker on 127.0.0.1 with the environment given; its log so far."""
    server = ServerProcess(tmp_path / "server", *args)
    server.proc = subprocess.Popen(
        server.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True
    )
    assert server.proc.stdout is not None
    line = server.proc.stdout.readline()  # the start line, or why it did not start
    if "conveyor serving on" not in line:
        server.proc.kill()
        raise AssertionError(line + server.proc.stdout.read())
    return server, line


def stop(server: ServerProcess) -> None:
    assert server.proc is not None
    server.proc.terminate()
    server.proc.communicate(timeout=30)


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip


UNAUTHORIZED = (
    "error: unauthorized: missing or wrong auth token (give the broker's token: --token,"
    " $CONVEYOR_TOKEN, or conveyor://:TOKEN@host:port)\n"
)


def test_token_from_a_file_and_every_way_a_client_gives_it(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")  # as `echo` or `openssl rand` leave it
    token_file.chmod(0o600)
    env = without_token_env()
    server, started = start(tmp_path, "--token-file", str(token_file), env=env)
    try:
        assert started.rstrip().endswith(f"token auth on (token from --token-file {token_file})")
        assert TOKEN not in started
        url = server.url

        refused = cli("queues", "--url", url, env=env)
        assert (refused.returncode, refused.stderr) == (1, UNAUTHORIZED)
        wrong = cli("queues", "--url", url, "--token", "nope", env=env)
        assert (wrong.returncode, wrong.stderr) == (1, UNAUTHORIZED)

        ways = {
            "flag": (["--url", url, "--token", TOKEN], env),
            "env": (["--url", url], {**env, "CONVEYOR_TOKEN": TOKEN}),
            "query": (["--url", f"{url}?token={TOKEN}"], env),
        }
        for way, (args, way_env) in ways.items():
            done = cli("create", f"queue-{way}", *args, env=way_env)
            assert (done.returncode, done.stderr) == (0, ""), way
        with conveyor.Client(url, token=TOKEN, timeout=10) as client:
            names = {q.name for q in client.queues()}
        assert {"queue-flag", "queue-env", "queue-query"} <= names

        http = Http(server.http_url)
        assert http.get("/healthz").status == 200
        assert http.get("/v1/queues").error_code() == "unauthorized"
        assert http.get("/v1/queues", headers={"Authorization": "Bearer nope"}).status == 401
        assert http.get("/v1/queues", headers={"Authorization": f"Bearer {TOKEN}"}).status == 200
    finally:
        stop(server)


def test_the_token_from_the_environment_and_a_worker_given_it(tmp_path: Path) -> None:
    server, started = start(tmp_path, env={**without_token_env(), "CONVEYOR_TOKEN": TOKEN})
    worker: subprocess.Popen[bytes] | None = None
    try:
        assert started.rstrip().endswith("token auth on (token from CONVEYOR_TOKEN)")
        assert TOKEN not in started
        (tmp_path / "tasks.py").write_text(
            textwrap.dedent(
                """\
                import conveyor

                app = conveyor.App()

                @app.task(queue="kitchen")
                def bake(pizza: str) -> str:
                    return f"{pizza} is ready"
                """
            )
        )
        log = (tmp_path / "worker.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "worker", "tasks", "--url", server.url,
             "--token", TOKEN],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=without_token_env(),
        )  # fmt: skip
        log.close()
        sys.path.insert(0, str(tmp_path))
        try:
            import tasks  # type: ignore[import-not-found]
        finally:
            sys.path.remove(str(tmp_path))
        tasks.app.url = f"{server.url}?token={TOKEN}"
        try:
            assert tasks.bake.delay("margherita").result(timeout=30) == "margherita is ready"
        finally:
            tasks.app.close()
            sys.modules.pop("tasks", None)
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        stop(server)


def test_a_client_gives_the_token_in_the_urls_userinfo(tmp_path: Path) -> None:
    server, _ = start(tmp_path, "--token", TOKEN, env=without_token_env())
    try:
        hostport = server.url.removeprefix("conveyor://")
        done = cli("queues", "--url", f"conveyor://:{TOKEN}@{hostport}", env=without_token_env())
        assert (done.returncode, done.stderr) == (0, "(no queues)\n")
    finally:
        stop(server)


def test_on_loopback_a_broker_needs_no_token_and_says_so(tmp_path: Path) -> None:
    env = without_token_env()
    server, started = start(tmp_path, env=env)
    try:
        assert started.rstrip().endswith("; no token auth (loopback only)")
        done = cli("queues", "--url", server.url, env=env)
        assert (done.returncode, done.stderr) == (0, "(no queues)\n")
    finally:
        stop(server)
