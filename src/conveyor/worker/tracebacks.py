"""A failed task's traceback, read back: the one line that names the
exception. What a worker records (a dead letter's reason, a result's error)
is the traceback text Python printed, possibly cut to its tail; this finds
``ValueError: no dough`` at its end for ``TaskFailed`` and ``conveyor dlq
list``."""

from __future__ import annotations

FRAME = '  File "'  # how each frame of a Python traceback starts


def is_traceback(text: str) -> bool:
    return text.startswith(("Traceback (most recent call last):", FRAME)) or f"\n{FRAME}" in text


def exception_line(text: str | None) -> str:
    """``Type: message`` that ends a traceback (its first line, for a
    message of several lines); any other text's first non-empty line."""
    text = text or ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    if not is_traceback(text):
        return lines[0].strip()
    # The exception is the first line that is not indented after the last
    # frame (a frame's own lines, and the source lines under it, are).
    frames = [i for i, line in enumerate(lines) if line.startswith(FRAME)]
    for line in lines[frames[-1] + 1 if frames else 1 :]:
        if not line.startswith((" ", "\t")):
            return line
    return lines[-1].strip()
