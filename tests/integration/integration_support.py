"""The harness of the integration tests: ``conveyor serve`` as a real
subprocess on free loopback ports, a small HTTP helper, a raw native-protocol
socket, and the bits the tests share (waiting, the RSS of a process, running
the ``conveyor`` command).

Nothing here starts a process it does not also know how to end: every
``ServerProcess`` is stopped by its PID (SIGTERM, then SIGKILL) by the fixture
that made it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import msgspec

import conveyor
from conveyor.core import wire

STARTUP_TIMEOUT = 20.0
SRC = str(Path(conveyor.__file__).resolve().parents[1])


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child Python process: this checkout importable,
    unbuffered output."""
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": SRC + (os.pathsep + path if path else ""),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02
) -> Any:
    """Poll ``predicate`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def rss_kib(pid: int) -> int:
    """The resident set size of a live process, in KiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class ServerProcess:
    """``conveyor serve`` in a subprocess, on free loopback ports; restartable
    on the same ports and data directory (to come back after a SIGKILL)."""

    def __init__(self, directory: Path, *extra_args: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.data = directory / "data"
        self.log_path = directory / "server.log"
        self.port = free_port()
        self.http_port = free_port()
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"conveyor://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "conveyor", "serve",
            "--data", str(self.data),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--http-port", str(self.http_port),
            "--log-level", "info",
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        if self._log is not None:
            self._log.close()
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=child_env()
        )
        wait_until(self._healthy, STARTUP_TIMEOUT, f"/healthz of {self.http_url}", 0.05)

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"conveyor serve exited with {self.proc.returncode}:\n{self.log_text()}"
            )
        try:
            with urllib.request.urlopen(f"{self.http_url}/healthz", timeout=1) as response:
                return response.status == 200 and json.load(response) == {"status": "ok"}
        except (OSError, urllib.error.URLError):
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def kill(self) -> None:
        """SIGKILL, by PID: no shutdown, no flush."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (a clean shutdown), then SIGKILL if it does not end; its
        exit code (None if it was never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


StartServer = Callable[..., ServerProcess]


# -- HTTP ---------------------------------------------------------------------------


class HttpReply:
    def __init__(self, status: int, headers: dict[str, str], raw: bytes) -> None:
        self.status = status
        self.headers = headers
        self.raw = raw

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def json(self) -> Any:
        assert self.content_type.startswith("application/json"), (self.status, self.raw[:300])
        return json.loads(self.raw)

    @property
    def text(self) -> str:
        return self.raw.decode()

    def error_code(self) -> str:
        data = self.json()
        assert set(data) == {"error"}, data
        assert set(data["error"]) == {"code", "message"}, data
        assert data["error"]["message"], data
        code: str = data["error"]["code"]
        return code

    def __repr__(self) -> str:
        return f"<HttpReply {self.status} {self.raw[:300]!r}>"


class Http:
    """A tiny JSON-over-HTTP client (urllib), that returns error statuses
    instead of raising them."""

    def __init__(self, base: str) -> None:
        self.base = base

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> HttpReply:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers=headers or {}
        )
        if data is not None and "Content-Type" not in (headers or {}):
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return HttpReply(
                    response.status, {k.lower(): v for k, v in response.headers.items()},
                    response.read(),
                )  # fmt: skip
        except urllib.error.HTTPError as exc:
            with exc:
                return HttpReply(
                    exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()
                )

    def get(self, path: str, **kw: Any) -> HttpReply:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> HttpReply:
        return self.request("POST", path, {} if body is None else body, **kw)

    def put(self, path: str, body: Any = None, **kw: Any) -> HttpReply:
        return self.request("PUT", path, {} if body is None else body, **kw)

    def patch(self, path: str, body: Any = None, **kw: Any) -> HttpReply:
        return self.request("PATCH", path, {} if body is None else body, **kw)

    def delete(self, path: str, body: Any = None, **kw: Any) -> HttpReply:
        return self.request("DELETE", path, body, **kw)


# -- the native protocol, by hand -----------------------------------------------------


class RawConnection:
    """A blocking socket speaking the native protocol frame by frame, for
    tests that misbehave on purpose."""

    def __init__(self, port: int, *, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.reader = wire.FrameReader(1 << 30)
        self.frames: list[Any] = []
        self.seen: list[Any] = []  # frames read while waiting for another one
        self.next_rid = 1

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def hello(self, name: str = "raw") -> dict[str, Any]:
        self.send(wire.PREAMBLE)
        return self.call("hello", {"version": wire.VERSION, "token": None, "name": name})  # type: ignore[no-any-return]

    def request(self, op: str, args: Any) -> int:
        rid = self.next_rid
        self.next_rid += 1
        self.send(wire.encode((wire.REQUEST, rid, op, args)))
        return rid

    def call(self, op: str, args: Any) -> Any:
        """Send a request and read frames until its reply; an error frame for
        it is returned as the frame itself ([2, rid, code, message])."""
        rid = self.request(op, args)
        frame = self.read_until(lambda f: f[0] in (wire.REPLY, wire.ERROR) and f[1] == rid)
        return frame[2] if frame[0] == wire.REPLY else frame

    def read_frame(self) -> list[Any] | None:
        """The next frame (pushes and heartbeats included); None at EOF."""
        while not self.frames:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                return None
            self.frames.extend(self.reader.feed(chunk))
        return self.frames.pop(0)  # type: ignore[no-any-return]

    def read_until(self, match: Callable[[list[Any]], bool]) -> list[Any]:
        """Frames are read (and kept in ``seen``) until one matches."""
        while True:
            frame = self.read_frame()
            if frame is None:
                raise AssertionError("the server closed the connection")
            if match(frame):
                return frame
            self.seen.append(frame)

    def read_to_eof(self, timeout: float = 10.0) -> list[Any]:
        """Every frame until the server closes; AssertionError if it does not
        within ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        frames = list(self.frames)
        self.frames.clear()
        try:
            while True:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    return frames
                with contextlib.suppress(Exception):
                    frames.extend(self.reader.feed(chunk))
        except ConnectionResetError:
            return frames
        except TimeoutError:
            raise AssertionError(
                f"the server did not close the connection within {timeout}s; got {frames}"
            ) from None


def msgpack(value: Any) -> bytes:
    return msgspec.msgpack.encode(value)


# -- the command line -------------------------------------------------------------------


def conveyor_cli(
    *args: str, url: str | None, timeout: float = 30.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m conveyor ARGS --url URL``, its output captured."""
    command = [sys.executable, "-m", "conveyor", *args]
    if url is not None:
        command += ["--url", url]
    return subprocess.run(
        command,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or child_env(),
    )
