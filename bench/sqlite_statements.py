"""The floor under the SQLite store: its hot statements alone, no broker.

    python bench/sqlite_statements.py --messages 100000

Creates the store's schema in a temporary file (WAL, synchronous=NORMAL, the
store's own pragmas and migrations) and times, inside one transaction each,
the statements the store runs per message: the insert of an enqueue (in
executemany batches of 100), the claim (UPDATE ... RETURNING, 100 per
statement) and the batched ack (one DELETE per 100). No Python objects are
built around them, nothing is fsynced: what is left of the broker's
per-message time above these figures is its own.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from conveyor.store.sql import migrations
from conveyor.store.sqlite.queries import Q

BATCH = 100


def timed(label: str, count: int, run: Callable[[], None]) -> None:
    started = time.perf_counter()
    run()
    took = time.perf_counter() - started
    print(f"{label:<34} {count / took:>10,.0f} msgs/s  {took / count * 1e6:6.2f} µs/msg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--body", type=int, default=100, help="body bytes")
    args = parser.parse_args()
    n = args.messages - args.messages % BATCH

    with tempfile.TemporaryDirectory() as directory:
        conn = sqlite3.connect(Path(directory) / "bench.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA cache_size=-65536")
        for _, script in migrations("conveyor.store.sqlite.migrations"):
            conn.executescript(script)
        now = time.time()
        body = b"x" * args.body
        rows = [(i + 1, "q", 0, 0, now, None, body, None, None, None, None, None, now)
                for i in range(n)]  # fmt: skip
        leased: list[tuple[int, int]] = []
        print(f"sqlite {sqlite3.sqlite_version}, {n:,} messages of {args.body} bytes")

        def insert() -> None:
            conn.execute("BEGIN")
            for at in range(0, n, BATCH):
                conn.executemany(Q.insert_message, rows[at : at + BATCH])
            conn.execute("COMMIT")

        def claim() -> None:
            conn.execute("BEGIN")
            for _ in range(n // BATCH):
                got = conn.execute(Q.claim_plain, ("s", 0, now + 30, "q", now, BATCH)).fetchall()
                leased.extend((row[0], row[7]) for row in got)
            conn.execute("COMMIT")

        def ack() -> None:
            conn.execute("BEGIN")
            for at in range(0, n, BATCH):
                pairs = json.dumps(leased[at : at + BATCH])
                conn.execute(Q.ack_delete, (pairs,)).fetchall()
            conn.execute("COMMIT")

        timed("insert (executemany of 100)", n, insert)
        timed("claim (UPDATE RETURNING, 100)", n, claim)
        assert len(leased) == n, len(leased)
        timed("ack (one DELETE per 100)", n, ack)
        left = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
        assert left == 0, f"{left} messages left"
        conn.close()


if __name__ == "__main__":
    main()
