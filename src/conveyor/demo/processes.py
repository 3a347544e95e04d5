"""The child processes of ``conveyor demo``: one broker and the shops.

The broker is ``conveyor serve`` on a free loopback port, its SQLite store in
the demo's temporary directory; each shop is a ``conveyor worker
conveyor.demo.app:app`` process running the real worker runtime. Each child
runs in a session of its own (Ctrl-C reaches the demo only, which stops them
in order) and, on Linux, dies with the demo even if the demo is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from conveyor.demo.app import DIR_ENV, SHOP_ENV

CONCURRENCY = 2  # ovens per shop
STARTUP_TIMEOUT = 30.0


class DemoError(Exception):
    """The demo could not run (a process did not start, ...)."""


def _die_with_parent() -> None:
    """In a child, before exec: SIGKILL when the demo dies (Linux), so that
    not even a killed demo leaves a broker or a shop behind."""
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Shop:
    number: int
    proc: subprocess.Popen[bytes]
    log: Path
    killed_at: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid


class Kitchen:
    """The demo's child processes: one broker and the shops."""

    def __init__(self, directory: Path, shops: int) -> None:
        self.directory = directory
        self.count = shops
        self.broker: subprocess.Popen[bytes] | None = None
        self.broker_log = directory / "broker.log"
        self.shops: list[Shop] = []
        self._logs: list[IO[bytes]] = []

    def _spawn(self, args: list[str], log: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        out = log.open("wb")
        self._logs.append(out)
        return subprocess.Popen(
            args,
            cwd=self.directory,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            # Its own session: Ctrl-C in the terminal reaches the demo only,
            # which stops the children in order.
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
        )

    def start_broker(self) -> None:
        self.broker = self._spawn(
            [
                sys.executable, "-m", "conveyor", "serve",
                "--data", str(self.directory / "data"),
                "--port", "0",
                "--http-port", "-1",
                "--log-level", "info",
            ],
            self.broker_log,
            {},
        )  # fmt: skip

    async def broker_port(self) -> int:
        """The port the broker chose, once its log says it serves."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            text = self.broker_log.read_text(errors="replace")
            found = re.search(r"native port (\d+)", text)
            if found:
                return int(found.group(1))
            if self.broker is None or self.broker.poll() is not None:
                raise DemoError(f"the broker did not start:\n{log_tail(self.broker_log)}")
            await asyncio.sleep(0.05)
        raise DemoError(f"the broker did not start in {STARTUP_TIMEOUT:g}s")

    def start_shops(self, url: str) -> None:
        for n in range(1, self.count + 1):
            log = self.directory / f"shop-{n}.log"
            proc = self._spawn(
                [
                    sys.executable, "-m", "conveyor", "worker",
                    "conveyor.demo.app:app",
                    "--concurrency", str(CONCURRENCY),
                    "--pool", "threads",
                    "--grace", "5",
                    "--url", url,
                    "--log-level", "warning",
                ],
                log,
                {"CONVEYOR_URL": url, DIR_ENV: str(self.directory), SHOP_ENV: str(n)},
            )  # fmt: skip
            self.shops.append(Shop(n, proc, log))

    def kill(self, shop: Shop) -> float:
        """SIGKILL: no goodbye, no settling; the broker sees the socket close."""
        killed_at = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.kill(shop.pid, signal.SIGKILL)
        shop.proc.wait(10)
        shop.killed_at = killed_at
        return killed_at

    def stop(self) -> None:
        """Shops first (SIGTERM: they finish what they hold and say goodbye),
        then the broker; whatever does not stop in time is killed."""
        for shop in self.shops:
            signal_child(shop.proc, signal.SIGTERM)
        for shop in self.shops:
            reap(shop.proc, 8.0)
        if self.broker is not None:
            signal_child(self.broker, signal.SIGTERM)
            reap(self.broker, 10.0)
        for out in self._logs:
            out.close()
        self._logs.clear()


def signal_child(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def reap(proc: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
