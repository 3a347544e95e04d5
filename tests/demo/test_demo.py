"""``conveyor demo`` end to end: a real broker and real shop processes, one
of them killed with SIGKILL; the audit must pass, and nothing the demo
started may be left running, or on disk, once it exits (Ctrl-C included).

Every process the demo starts inherits its environment, so a marker put
there finds them all in /proc afterwards, however they were started.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from requires import unavailable

pytestmark = [pytest.mark.slow, pytest.mark.chaos]

if not Path("/proc/self/environ").exists():  # how the test finds the demo's processes
    unavailable("needs /proc", module_level=True)

MARKER = "CONVEYOR_DEMO_TEST_MARKER"


def demo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "conveyor", "demo", *args]


def demo_env(tmp_path: Path, marker: str) -> dict[str, str]:
    # TMPDIR: the demo's temporary directory is made (and must be removed) here.
    return {**os.environ, MARKER: marker, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}


def marked_processes(marker: str) -> list[int]:
    """Pids of live processes whose environment carries the marker."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone, or not ours
            continue
        if needle in environ.split(b"\0") and state != "Z":
            found.append(int(entry.name))
    return found


def assert_nothing_left(tmp_path: Path, marker: str) -> None:
    deadline = time.monotonic() + 5.0
    while (left := marked_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == [], f"processes left running: {left}"
    assert list(tmp_path.glob("conveyor-demo-*")) == [], "the demo's temporary directory is left"


def test_demo_passes_its_audit_and_leaves_nothing_behind(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    started = time.monotonic()
    proc = subprocess.run(
        demo_command("--no-live", "--orders", "60", "--shops", "3", "--seed", "1"),
        env=demo_env(tmp_path, marker),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    took = time.monotonic() - started
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr}"
    assert re.search(r"^lost\s+0\s+0\s+ok$", out, re.MULTILINE), out
    assert re.search(r"^shop 3 killed while baking\s+o-\d+", out, re.MULTILINE), out
    assert re.search(r"^re-routed from the dead shop\s+[1-9]", out, re.MULTILINE), out
    assert re.search(r"^baked twice\s+0\s", out, re.MULTILINE), out
    assert re.search(r"^grouped orders baked in order\s+yes", out, re.MULTILINE), out
    assert "audit PASSED: placed 60, baked 60" in out
    assert "killed shop 3" in out
    # Progress is shown without the live view: lines with the queue's state.
    assert len(re.findall(r"^\[\s*\d+\.\d+s\] placed", out, re.MULTILINE)) >= 3, out
    assert "KILLED (SIGKILL" in out
    assert_nothing_left(tmp_path, marker)
    print(f"the demo took {took:.1f}s")


def test_ctrl_c_stops_the_demo_and_its_children(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    proc = subprocess.Popen(
        demo_command("--no-live", "--orders", "200", "--seed", "2"),
        env=demo_env(tmp_path, marker),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # until the shops are baking
            seen.append(line)
            if re.match(r"^\[\s*\d+\.\d+s\] placed\s+[1-9]", line):
                break
        else:
            pytest.fail("the demo ended before it got going:\n" + "".join(seen))
        assert len(marked_processes(marker)) >= 5  # the demo, a broker, three shops
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted" in rest
    assert_nothing_left(tmp_path, marker)
