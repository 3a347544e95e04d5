"""``conveyor demo``: the pizza shop, in one command.

A broker (``conveyor serve`` in a child process, on a free loopback port, its
SQLite store in a temporary directory) and ``--shops`` shop workers (each a
``conveyor worker conveyor.worker.demo_app:app`` process running the real
worker runtime). Customers place orders over the first seconds: urgent
pizzas at high priority, pizzas, drinks at low priority, and a few customers
whose orders share a group (``group=customer:<name>``), so that they are baked
in order, one at a time. Partway through, the last shop is killed with
SIGKILL while it has pizzas in the oven; the broker sees its connection drop,
releases its leases, and the other shops bake those orders.

What happened is read from evidence, not assumed: every bake appends
``start`` and ``done`` records to its shop's file (see demo_app.py), and every
order's message carries the broker's result (which shop's bake it
committed). The audit at the end checks them: nothing lost, nothing baked
twice except what the dead shop held, grouped orders in order. The exit code
is 0 only if the audit passes.

Every child process and the temporary directory are removed on the way out,
Ctrl-C and SIGTERM included (and on Linux the children die with the demo
even if it is killed itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from conveyor.client.aio import AsyncClient
from conveyor.core.errors import ConveyorError, ResultTimeout
from conveyor.core.types import NewMessage, QueueStats, ResultStatus, SessionInfo
from conveyor.worker.demo_app import DIR_ENV, QUEUE, SHOP_ENV, prepare, records_path

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live
    from rich.text import Text

URGENT, PIZZA, DRINK = "urgent", "pizza", "drink"
PRIORITY = {URGENT: 9, PIZZA: 5, DRINK: 1}
PIZZAS = (
    "margherita", "marinara", "diavola", "capricciosa", "quattro formaggi",
    "funghi", "napoletana", "prosciutto", "ortolana", "calzone",
)  # fmt: skip
DRINKS = ("cola", "lemonade", "chinotto", "sparkling water", "beer", "aranciata")
CUSTOMERS = (
    "Ada", "Alan", "Barbara", "Claude", "Dennis", "Edsger", "Frances", "Grace",
    "Guido", "Hedy", "Ivan", "John", "Ken", "Leslie", "Linus", "Margaret",
    "Niklaus", "Radia", "Shafi", "Tony", "Vint", "Whitfield", "Yukihiro", "Zuse",
)  # fmt: skip
FAMILIES = ("Rossi", "Bianchi", "Esposito", "Romano", "Colombo", "Ricci")

CONCURRENCY = 2  # ovens per shop
LEASE = 5.0  # the queue's visibility timeout: a lease the runtime renews while a bake runs
KILL_AFTER = 0.3  # the last shop is killed once this share of the orders is baked
TICK = 0.1  # seconds between looks at the broker and the shops' records
STARTUP_TIMEOUT = 30.0
MIN_ORDERS = 20  # fewer, and the doomed shop may have nothing in its oven to lose
RULE_NOTE = "* but an ungrouped order the dead shop held: its result may have died with it"


class DemoError(Exception):
    """The demo could not run (a process did not start, ...)."""


# -- the orders ------------------------------------------------------------------------


@dataclass(frozen=True)
class Order:
    id: str
    kind: str  # urgent, pizza or drink
    item: str
    customer: str
    group: str | None  # customer:<name> for the customers whose orders go in order
    seq: int | None  # the order's place among its group's
    seconds: float  # how long it bakes
    at: float  # seconds after the opening when the customer orders

    @property
    def priority(self) -> int:
        return PRIORITY[self.kind]

    def payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "item": self.item,
            "customer": self.customer,
            "seq": self.seq,
            "seconds": self.seconds,
        }

    def label(self) -> str:
        what = f"{self.item}!" if self.kind == URGENT else self.item
        if self.group is not None:
            what += f" ({self.customer} {self.seq})"
        return f"{self.id} {what}"


def plan_orders(count: int, seed: int) -> list[Order]:
    """``count`` orders, the same for the same seed."""
    rng = random.Random(seed)
    window = min(12.0, max(2.0, count * 0.07))  # seconds over which customers arrive
    times = sorted(rng.uniform(0.0, window) for _ in range(count))
    width = len(str(count))
    families = min(4, max(1, count // 20)) if count >= 6 else 0
    per_family = 4 if count >= 100 else 3
    grouped = rng.sample(range(count), families * per_family)
    family_of: dict[int, tuple[str, int]] = {}
    for f in range(families):
        members = sorted(grouped[f * per_family : (f + 1) * per_family])
        for position, index in enumerate(members, 1):
            family_of[index] = (FAMILIES[f], position)
    orders = []
    seq: int | None
    for i, at in enumerate(times):
        if i in family_of:
            family, seq = family_of[i]
            kind, customer, group = PIZZA, f"{family}s", f"customer:{family.lower()}"
        else:
            kind = rng.choices((URGENT, PIZZA, DRINK), weights=(2, 5, 3))[0]
            customer, group, seq = rng.choice(CUSTOMERS), None, None
        if kind == DRINK:
            item, seconds = rng.choice(DRINKS), rng.uniform(0.15, 0.35)
        else:
            item, seconds = rng.choice(PIZZAS), rng.uniform(0.7, 1.3)
        orders.append(
            Order(
                id=f"o-{i + 1:0{width}d}",
                kind=kind,
                item=item,
                customer=customer,
                group=group,
                seq=seq,
                seconds=round(seconds, 2),
                at=round(at, 3),
            )
        )
    return orders


def order_message(order: Order) -> NewMessage:
    """The task message of one order: the kitchen's ``prepare`` task."""
    return prepare.message([order.payload()], priority=order.priority, group=order.group)


# -- the records of the shops ------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One line a shop wrote: it started, finished or abandoned a bake."""

    event: str  # start, done, abandoned
    order: str
    shop: int
    token: int  # the lease's fencing token: one per delivery of the order
    attempt: int
    t: float  # time.time() in the shop
    seconds: float = 0.0  # planned duration (start records)

    @classmethod
    def parse(cls, line: str) -> Record:
        data = json.loads(line)
        return cls(
            event=str(data["event"]),
            order=str(data["order"]),
            shop=int(data["shop"]),
            token=int(data["token"]),
            attempt=int(data["attempt"]),
            t=float(data["t"]),
            seconds=float(data.get("seconds", 0.0)),
        )

    @property
    def bake(self) -> tuple[str, int, int]:
        """Which bake the record belongs to: order, shop, token."""
        return (self.order, self.shop, self.token)


class RecordTail:
    """Reads a shop's record file as it grows; a torn last line waits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def read(self) -> list[Record]:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        return [Record.parse(line.decode()) for line in lines if line.strip()]


# -- the audit -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What the broker kept for an order's message: whose bake it committed."""

    ok: bool
    shop: int | None = None
    token: int | None = None


@dataclass(frozen=True)
class Check:
    label: str
    value: str
    rule: str
    ok: bool | None  # None: for information


@dataclass
class Audit:
    checks: list[Check]
    placed: int = 0
    baked: int = 0
    lost: list[str] = field(default_factory=list)
    rerouted: dict[str, int] = field(default_factory=dict)  # order -> the shop that baked it
    held: list[str] = field(default_factory=list)  # started by the dead shop, unfinished
    twice: list[str] = field(default_factory=list)
    bad_twice: list[str] = field(default_factory=list)
    at_once: list[str] = field(default_factory=list)
    grouped_in_order: bool = True

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks if c.ok is not None)

    def summary(self, killed: int | None) -> str:
        return (
            f"audit {'PASSED' if self.passed else 'FAILED'}: placed {self.placed}, "
            f"baked {self.baked}, re-routed {len(self.rerouted)}, lost {len(self.lost)}, "
            f"baked twice {len(self.twice)}, grouped in order "
            f"{'yes' if self.grouped_in_order else 'no'}, killed shop "
            f"{'-' if killed is None else killed}"
        )


def _ids(ids: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" (+{len(ids) - limit})" if len(ids) > limit else "")


class Evidence:
    """The shops' records and the broker's results, indexed by order."""

    def __init__(
        self,
        placed: Mapping[str, float],
        records: Sequence[Record],
        outcomes: Mapping[str, Outcome],
        killed_shop: int | None,
        killed_at: float | None,
    ) -> None:
        self.placed = placed
        self.killed_shop = killed_shop
        self.killed_at = killed_at
        self.starts: dict[str, list[Record]] = defaultdict(list)
        self.dones: dict[str, list[Record]] = defaultdict(list)
        self.ended: dict[tuple[str, int, int], Record] = {}
        for r in records:
            if r.event == "start":
                self.starts[r.order].append(r)
            elif r.event in ("done", "abandoned"):
                self.ended[r.bake] = r
                if r.event == "done":
                    self.dones[r.order].append(r)
        # The bake whose result the broker kept, if a shop's records show it done.
        self.committed: dict[str, Record] = {}
        for oid in placed:
            outcome = outcomes.get(oid)
            if outcome is None or not outcome.ok:
                continue
            for d in self.dones[oid]:
                if (d.shop, d.token) == (outcome.shop, outcome.token):
                    self.committed[oid] = d

    def held(self) -> tuple[list[str], set[str]]:
        """The orders the dead shop had started and not finished; and those
        plus the ones it finished but whose result never reached the broker."""
        unfinished: list[str] = []
        held: set[str] = set()
        if self.killed_shop is None:
            return unfinished, held
        for oid in self.placed:
            if any(
                s.shop == self.killed_shop and s.bake not in self.ended for s in self.starts[oid]
            ):
                unfinished.append(oid)
                held.add(oid)
            if any(
                d.shop == self.killed_shop and self.committed.get(oid) is not d
                for d in self.dones[oid]
            ):
                held.add(oid)
        return unfinished, held

    def at_once(self, oid: str) -> bool:
        """Whether two bakes of the order overlapped (two shops at the oven
        with one order: what leases prevent)."""
        spans = []
        for s in self.starts[oid]:
            end = self.ended.get(s.bake)
            if end is not None:
                spans.append((s.t, end.t))
            elif s.shop == self.killed_shop and self.killed_at is not None:
                spans.append((s.t, self.killed_at))
            else:
                spans.append((s.t, math.inf))  # a live shop never finished it
        spans.sort()
        return any(b[0] < a[1] for a, b in itertools.pairwise(spans))

    def out_of_order(self, groups: Mapping[str, list[Order]]) -> list[str]:
        """Grouped orders that went into an oven before the previous order of
        their group was out."""
        late: list[str] = []
        for members in groups.values():
            ordered = sorted(members, key=lambda o: o.seq or 0)
            for a, b in itertools.pairwise(ordered):
                done_a = self.committed.get(a.id)
                if done_a is None or any(s.t < done_a.t for s in self.starts[b.id]):
                    late.append(b.id)
        return late

    def waits(self, by_id: Mapping[str, Order]) -> dict[str, list[float]]:
        """Seconds from placing to the oven of the bake that counted, by kind."""
        waits: dict[str, list[float]] = defaultdict(list)
        for oid, d in self.committed.items():
            start = next(s for s in self.starts[oid] if s.bake == d.bake)
            waits[by_id[oid].kind].append(start.t - self.placed[oid])
        return waits


def audit(
    orders: Sequence[Order],
    placed: Mapping[str, float],
    records: Sequence[Record],
    outcomes: Mapping[str, Outcome],
    *,
    killed_shop: int | None,
    killed_at: float | None,
    broker: QueueStats | None = None,
) -> Audit:
    """Check what happened, from the shops' records and the broker's results.

    ``placed``: the orders the broker acknowledged, with the time they were
    placed. An order is baked when the broker holds a result naming a bake
    (shop and fencing token) that the shop's records show finished."""
    by_id = {o.id: o for o in orders}
    ev = Evidence(placed, records, outcomes, killed_shop, killed_at)
    committed = ev.committed
    lost = [oid for oid in placed if oid not in committed]
    unfinished, held = ev.held()
    rerouted = {
        oid: committed[oid].shop
        for oid in unfinished
        if oid in committed and committed[oid].shop != killed_shop
    }
    twice = [oid for oid in placed if len(ev.dones[oid]) > 1]
    bad_twice = [oid for oid in twice if oid not in held or by_id[oid].group is not None]
    at_once = [oid for oid in placed if ev.at_once(oid)]
    groups: dict[str, list[Order]] = defaultdict(list)
    for oid in placed:
        group = by_id[oid].group
        if group is not None:
            groups[group].append(by_id[oid])
    late = ev.out_of_order(groups)

    kinds = Counter(by_id[oid].kind for oid in placed)
    grouped = sum(len(m) for m in groups.values())
    checks = [
        Check(
            "orders placed",
            f"{len(placed)}: {kinds[URGENT]} urgent, {kinds[PIZZA]} pizzas, {kinds[DRINK]} drinks",
            "",
            None,
        ),
        Check("baked", str(len(committed)), "= placed", len(committed) == len(placed)),
        *_kill_checks(killed_shop, unfinished, rerouted),
        Check("lost", _count(lost), "0", not lost),
        Check("baked twice", _count(twice), "0 *", not bad_twice),
        Check("baked at two shops at once", _count(at_once), "0", not at_once),
        Check(
            "grouped orders baked in order",
            ("yes" if not late else f"no: {_ids(late)}")
            + (f" ({grouped} orders of {len(groups)} customers)" if groups else " (no groups)"),
            "yes",
            not late,
        ),
    ]
    if broker is not None:
        waiting = broker.ready + broker.scheduled + broker.leased
        checks.append(
            Check(
                "the broker's own count",
                f"acked {broker.acked_total}, dead {broker.dead}, waiting {waiting}",
                "acked = placed",
                broker.acked_total == len(placed) and broker.dead == 0 and waiting == 0,
            )
        )
    checks += _info_checks(ev, by_id, rerouted)
    return Audit(
        checks=checks,
        placed=len(placed),
        baked=len(committed),
        lost=lost,
        rerouted=rerouted,
        held=unfinished,
        twice=twice,
        bad_twice=bad_twice,
        at_once=at_once,
        grouped_in_order=not late,
    )


def _count(ids: Sequence[str]) -> str:
    return str(len(ids)) + (f": {_ids(ids)}" if ids else "")


def _kill_checks(
    killed_shop: int | None, unfinished: list[str], rerouted: Mapping[str, int]
) -> list[Check]:
    if killed_shop is None:
        return [Check("shop killed while baking", "none", ">= 1 order", False)]
    moved = ", ".join(f"{oid} -> shop {shop}" for oid, shop in rerouted.items())
    return [
        Check(
            f"shop {killed_shop} killed while baking",
            _ids(unfinished) if unfinished else "nothing",
            ">= 1 order",
            bool(unfinished),
        ),
        Check(
            "re-routed from the dead shop",
            str(len(rerouted)) + (f": {moved}" if moved else ""),
            "all it was baking",
            all(oid in rerouted for oid in unfinished),
        ),
    ]


def _info_checks(
    ev: Evidence, by_id: Mapping[str, Order], rerouted: Mapping[str, int]
) -> list[Check]:
    checks = []
    waits = ev.waits(by_id)
    if waits:
        means = [
            f"{kind} {sum(w) / len(w):.1f}s"
            for kind in (URGENT, PIZZA, DRINK)
            if (w := waits.get(kind))
        ]
        checks.append(Check("wait for an oven (mean)", " · ".join(means), "", None))
    if rerouted and ev.killed_at is not None:
        latency = [
            min(s.t for s in ev.starts[oid] if s.shop != ev.killed_shop) - ev.killed_at
            for oid in rerouted
        ]
        checks.append(
            Check(
                "re-routed, back in an oven",
                f"{min(latency):.2f}s to {max(latency):.2f}s after the kill, by priority",
                "",
                None,
            )
        )
    return checks


def audit_text(result: Audit) -> str:
    """The audit as a plain-text table."""
    rows = [("CHECK", "RESULT", "MUST BE", "")]
    for c in result.checks:
        mark = "" if c.ok is None else ("ok" if c.ok else "FAIL")
        rows.append((c.label, c.value, c.rule, mark))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join([*lines, RULE_NOTE])


# -- the processes -------------------------------------------------------------------------


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
                raise DemoError(f"the broker did not start:\n{_tail(self.broker_log)}")
            await asyncio.sleep(0.05)
        raise DemoError(f"the broker did not start in {STARTUP_TIMEOUT:g}s")

    def start_shops(self, url: str) -> None:
        for n in range(1, self.count + 1):
            log = self.directory / f"shop-{n}.log"
            proc = self._spawn(
                [
                    sys.executable, "-m", "conveyor", "worker",
                    "conveyor.worker.demo_app:app",
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
            _signal(shop.proc, signal.SIGTERM)
        for shop in self.shops:
            _reap(shop.proc, 8.0)
        if self.broker is not None:
            _signal(self.broker, signal.SIGTERM)
            _reap(self.broker, 10.0)
        for out in self._logs:
            out.close()
        self._logs.clear()


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def _reap(proc: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- the run -------------------------------------------------------------------------------


@dataclass
class ShopState:
    number: int
    pid: int
    baking: dict[tuple[str, int, int], Record] = field(default_factory=dict)
    baked: int = 0
    last_done: float = 0.0
    killed_at: float | None = None
    exit_code: int | None = None
    session: SessionInfo | None = None


@dataclass
class State:
    orders: list[Order]
    seed: int
    url: str
    opened: float  # time.time() when customers started to come in
    shops: dict[int, ShopState]
    placed: dict[str, float] = field(default_factory=dict)  # order -> time placed
    message_of: dict[str, str] = field(default_factory=dict)  # order -> message id
    events: list[tuple[str, str]] = field(default_factory=list)  # text, rich style
    stats: QueueStats | None = None
    placing_done: bool = False
    placing_error: ConveyorError | None = None
    killed: int | None = None
    killed_at: float | None = None
    held_at_kill: set[str] = field(default_factory=set)
    rerouted_seen: set[str] = field(default_factory=set)
    by_id: dict[str, Order] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_id = {o.id: o for o in self.orders}

    def event(self, at: float, text: str, style: str = "dim") -> None:
        self.events.append((f"[{self.elapsed(at):5.1f}s] {text}", style))

    def elapsed(self, at: float | None = None) -> float:
        return (time.time() if at is None else at) - self.opened

    def done_count(self) -> int:
        return sum(s.baked for s in self.shops.values())


class View:
    """Plain progress lines (``--no-live``)."""

    def __init__(self) -> None:
        self._last_line = 0.0
        self._shown_events = 0

    def __enter__(self) -> View:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def say(self, text: str) -> None:
        print(text, flush=True)

    def update(self, state: State, final: bool = False) -> None:
        for text, _ in state.events[self._shown_events :]:
            print(text, flush=True)
        self._shown_events = len(state.events)
        now = time.monotonic()
        if not final and now - self._last_line < 1.0:
            return
        self._last_line = now
        s = state.stats
        queue = (
            ""
            if s is None
            else f"ready {s.ready:3d}  leased {s.leased:2d}  done {s.acked_total:3d}"
        )
        shops = "  ".join(
            f"shop {shop.number}: " + _shop_status(shop) for shop in state.shops.values()
        )
        print(
            f"[{state.elapsed():5.1f}s] placed {len(state.placed):3d}/{len(state.orders)}  "
            f"{queue}  |  {shops}",
            flush=True,
        )

    def audit(self, result: Audit, state: State) -> None:
        print()
        print(audit_text(result))
        print()
        print(result.summary(state.killed))


def _shop_status(shop: ShopState) -> str:
    """What a shop is up to, in a few characters: its ovens, or its fate."""
    if shop.killed_at is not None:
        return "KILLED"
    if shop.exit_code is not None:
        return f"exited ({shop.exit_code})"
    return ",".join(sorted(k[0] for k in shop.baking)) or "idle"


class LiveView(View):
    """The live terminal view (rich.live.Live)."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console
        self._live: Live | None = None

    def __enter__(self) -> LiveView:
        from rich.live import Live

        self._live = Live(console=self.console, auto_refresh=False, transient=False)
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def say(self, text: str) -> None:
        self.console.print(text)

    def update(self, state: State, final: bool = False) -> None:
        if self._live is not None:
            self._live.update(self.render(state), refresh=True)

    def render(self, state: State) -> RenderableType:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        s = state.stats
        queue = Text.assemble(("queue ", "bold"), (f"{QUEUE}:  ", "bold"))
        for label, value in (
            ("placed", f"{len(state.placed)}/{len(state.orders)}"),
            ("ready", "-" if s is None else str(s.ready)),
            ("leased", "-" if s is None else str(s.leased)),
            ("done", "-" if s is None else str(s.acked_total)),
            ("dead", "-" if s is None else str(s.dead)),
        ):
            queue.append_text(Text.assemble((label, "dim"), " ", (value, "bold"), "   "))
        shops = Table(box=None, padding=(0, 1), header_style="bold", expand=True)
        shops.add_column("shop", justify="right")
        shops.add_column("pid", justify="right")
        shops.add_column("state")
        shops.add_column("heartbeat")
        shops.add_column("leases", justify="right")
        shops.add_column("baked", justify="right")
        shops.add_column("in the oven now", ratio=1, no_wrap=True, overflow="ellipsis")
        now = time.time()
        for shop in state.shops.values():
            status, beat, oven = _shop_cells(state, shop, now)
            leases = "-" if shop.session is None else str(shop.session.leases)
            shops.add_row(str(shop.number), str(shop.pid), status, beat, leases,
                          str(shop.baked), oven)  # fmt: skip
        # As many recent events as the terminal has room for.
        used = 10 + sum(max(1, min(CONCURRENCY, len(sh.baking))) for sh in state.shops.values())
        room = max(2, self.console.size.height - used)
        events = Text(no_wrap=True, overflow="ellipsis")
        for text, style in state.events[-room:]:
            events.append(text + "\n", style=style)
        events.rstrip()
        return Panel(
            Group(
                queue,
                Text(
                    "priority: urgent! 9 · pizza 5 · drink 1      (Rossis 2): grouped, in order",
                    style="dim",
                    no_wrap=True,
                    overflow="ellipsis",
                ),
                Text(""),
                shops,
                Text(""),
                events,
            ),
            title=Text.assemble(
                ("Conveyor pizza shop", "bold"), f" · {state.elapsed():.1f}s · seed {state.seed}"
            ),
            title_align="left",
            subtitle=f"broker {state.url} · SQLite, fsync",
            subtitle_align="right",
        )

    def audit(self, result: Audit, state: State) -> None:
        from rich import box
        from rich.table import Table
        from rich.text import Text

        table = Table(
            title="Audit: the shops' records and the broker's results",
            caption=RULE_NOTE,
            box=box.SIMPLE_HEAD,
            expand=True,
        )
        table.add_column("check", no_wrap=True)
        table.add_column("result", ratio=1, overflow="fold")
        table.add_column("must be", no_wrap=True)
        table.add_column("", no_wrap=True)
        for c in result.checks:
            mark = (
                Text("")
                if c.ok is None
                else Text("ok", style="green")
                if c.ok
                else Text("FAIL", style="bold red")
            )
            table.add_row(c.label, c.value, c.rule, mark)
        self.console.print(table)
        style = "bold green" if result.passed else "bold red"
        self.console.print(Text(result.summary(state.killed), style=style))


def _shop_cells(state: State, shop: ShopState, now: float) -> tuple[Text, Text, Text]:
    """A shop's state, heartbeat and ovens, for the live view."""
    from rich.text import Text

    if shop.killed_at is not None:
        held = ", ".join(sorted(state.held_at_kill)) or "nothing"
        closed = "closed" if shop.session is None else "open"
        return (
            Text("KILLED", style="bold red"),
            Text(closed, style="red"),
            Text(f"was baking {held}", style="red"),
        )
    if shop.exit_code is not None:
        return Text(f"exit {shop.exit_code}", style="yellow"), Text("-"), Text("")
    if shop.session is None:
        beat = Text("none", style="yellow")
    else:
        beat = Text(f"{max(0.0, now - shop.session.last_seen):.1f}s ago", style="green")
    by_id = state.by_id
    baking = [_order_text(by_id[r.order], r, now) for r in sorted(shop.baking.values(), key=_t)]
    oven = Text("\n".join(baking) or "idle", style="" if baking else "dim")
    return Text("alive", style="green"), beat, oven


def _t(record: Record) -> float:
    return record.t


def _order_text(order: Order, record: Record, now: float) -> str:
    left = max(0.0, record.t + record.seconds - now)
    again = f" (attempt {record.attempt})" if record.attempt > 1 else ""
    return f"{left:.1f}s {order.label()}{again}"


async def place_orders(client: AsyncClient, state: State) -> None:
    """The customers: each order at its time, as one enqueue per moment."""
    pending = list(state.orders)
    while pending:
        now = state.elapsed()
        due = [o for o in pending if o.at <= now]
        if due:
            pending = pending[len(due) :]
            results = await client.enqueue_many(QUEUE, [order_message(o) for o in due])
            placed_at = time.time()
            for order, result in zip(due, results, strict=True):
                state.placed[order.id] = placed_at
                state.message_of[order.id] = result.id
        if pending:
            await asyncio.sleep(max(0.0, min(0.05, pending[0].at - state.elapsed())))
    state.placing_done = True
    state.event(time.time(), f"all {len(state.placed)} orders placed")


async def customers(client: AsyncClient, state: State) -> None:
    try:
        await place_orders(client, state)
    except ConveyorError as exc:
        state.placing_error = exc


def absorb(state: State, records: list[Record]) -> None:
    """New records of the shops: who bakes what, and what it means."""
    by_id = state.by_id
    for r in records:
        shop = state.shops[r.shop]
        order = by_id.get(r.order)
        label = r.order if order is None else order.label()
        if r.event == "start":
            shop.baking[r.bake] = r
            if (
                state.killed is not None
                and r.shop != state.killed
                and r.order in state.held_at_kill
                and r.order not in state.rerouted_seen
            ):
                state.rerouted_seen.add(r.order)
                after = r.t - (state.killed_at or r.t)
                state.event(
                    r.t,
                    f"{r.order} re-routed to shop {r.shop} (attempt {r.attempt}),"
                    f" {after:.2f}s after the kill",
                    "yellow",
                )
        elif r.event in ("done", "abandoned"):
            shop.baking.pop(r.bake, None)
            if r.event == "done":
                shop.baked += 1
                shop.last_done = r.t
                if r.order in state.rerouted_seen:
                    state.event(r.t, f"shop {r.shop} baked the re-routed {label}", "yellow")
                elif order is not None and order.group is not None:
                    state.event(r.t, f"shop {r.shop} baked {label}")
            else:
                state.event(r.t, f"shop {r.shop} lost its lease on {label}: abandoned", "red")


def kill_moment(state: State, shop: ShopState, waited: float) -> bool:
    """Whether to kill the shop now: it must have pizzas in the oven, none of
    them about to come out (for ``waited`` < 2 s: both ovens busy), and none
    just out (an order whose result may not have reached the broker yet
    would be baked twice; the audit allows that for the dead shop's orders,
    but a demo shows the ordinary case)."""
    now = time.time()
    if not shop.baking:
        return False
    if waited > 8.0:
        return True
    backlog = 0 if state.stats is None else state.stats.ready
    want = CONCURRENCY if waited < 2.0 and backlog >= CONCURRENCY else 1
    left = min(r.t + r.seconds - now for r in shop.baking.values())
    return len(shop.baking) >= want and left >= 0.25 and now - shop.last_done >= 0.1


async def wait_for_shops(client: AsyncClient, kitchen: Kitchen) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        sessions = await client.sessions()
        ready = {
            shop.number
            for shop in kitchen.shops
            for s in sessions
            if s.name.endswith(f"-{shop.pid}") and QUEUE in s.queues
        }
        if len(ready) == len(kitchen.shops):
            return
        for shop in kitchen.shops:
            if shop.proc.poll() is not None:
                raise DemoError(f"shop {shop.number} exited:\n{_tail(shop.log)}")
        if time.monotonic() > deadline:
            raise DemoError(f"the shops did not start in {STARTUP_TIMEOUT:g}s")
        await asyncio.sleep(0.05)


async def collect_outcomes(client: AsyncClient, state: State) -> dict[str, Outcome]:
    """The broker's result for every order: whose bake it committed."""

    async def one(order_id: str, message_id: str) -> tuple[str, Outcome]:
        try:
            result = await client.result(message_id, timeout=1.0)
        except ResultTimeout:
            return order_id, Outcome(ok=False)
        if result.status != ResultStatus.OK or result.body is None:
            return order_id, Outcome(ok=False)
        value = json.loads(result.body)
        return order_id, Outcome(ok=True, shop=int(value["shop"]), token=int(value["token"]))

    outcomes: dict[str, Outcome] = {}
    items = list(state.message_of.items())
    for start in range(0, len(items), 50):
        chunk = items[start : start + 50]
        outcomes.update(await asyncio.gather(*(one(o, m) for o, m in chunk)))
    return outcomes


async def run_shop(
    client: AsyncClient, kitchen: Kitchen, state: State, view: View, deadline: float
) -> None:
    """Watch, kill the last shop partway through, wait until all is baked."""
    tails = {s.number: RecordTail(records_path(kitchen.directory, s.number)) for s in kitchen.shops}
    victim = kitchen.shops[-1]
    kill_after = max(2, math.ceil(len(state.orders) * KILL_AFTER))
    armed: float | None = None
    while True:
        for tail in tails.values():
            absorb(state, tail.read())
        await look_at_broker(client, kitchen, state)
        view.update(state)
        if state.placing_error is not None:
            raise DemoError(f"a customer could not place an order: {state.placing_error}")
        s = state.stats
        if (
            s is not None
            and state.placing_done
            and s.acked_total + s.dead_total >= len(state.placed)
            and s.ready + s.scheduled + s.leased == 0
        ):
            return
        if time.monotonic() > deadline:
            state.event(time.time(), "gave up waiting: orders are missing", "bold red")
            return
        if state.killed is None and state.done_count() >= kill_after:
            armed = armed or time.monotonic()
            await stalk(kitchen, state, victim, tails[victim.number], armed)
        else:
            await asyncio.sleep(TICK)


async def look_at_broker(client: AsyncClient, kitchen: Kitchen, state: State) -> None:
    """The queue's stats and the shops' sessions (their heartbeats), as the
    broker sees them; and whether a shop process has exited."""
    state.stats = await client.stats(QUEUE)
    sessions = await client.sessions()
    for shop in kitchen.shops:
        shop_state = state.shops[shop.number]
        shop_state.session = next((s for s in sessions if s.name.endswith(f"-{shop.pid}")), None)
        if shop.killed_at is None and shop_state.exit_code is None:
            shop_state.exit_code = shop.proc.poll()


async def stalk(
    kitchen: Kitchen, state: State, victim: Shop, tail: RecordTail, armed: float
) -> None:
    """For one tick, watch the doomed shop's oven closely, and kill it at the
    right moment (see ``kill_moment``)."""
    end = time.monotonic() + TICK
    victim_state = state.shops[victim.number]
    while time.monotonic() < end:
        absorb(state, tail.read())
        if kill_moment(state, victim_state, time.monotonic() - armed):
            state.killed_at = victim_state.killed_at = kitchen.kill(victim)
            # Its file is complete now: what was in its oven when it died.
            absorb(state, tail.read())
            state.killed = victim.number
            state.held_at_kill = {k[0] for k in victim_state.baking}
            victim_state.baking.clear()
            held = ", ".join(sorted(state.held_at_kill))
            state.event(
                state.killed_at,
                f"shop {victim.number} KILLED (SIGKILL, pid {victim.pid}) with {held} in the oven",
                "bold red",
            )
            return
        await asyncio.sleep(0.01)


async def _demo(
    kitchen: Kitchen, orders: list[Order], seed: int, view: View, stopped_by: list[int]
) -> int:
    task = asyncio.current_task()
    assert task is not None

    def stop(sig: int) -> None:
        stopped_by.append(sig)
        task.cancel()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGHUP):  # like Ctrl-C: stop, and clean up
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop, sig)
    view.say(f"Opening the pizza shop: a broker and {kitchen.count} shops ...")
    kitchen.start_broker()
    port = await kitchen.broker_port()
    url = f"conveyor://127.0.0.1:{port}"
    async with AsyncClient(url, name="conveyor-demo", timeout=10.0) as client:
        await client.create_queue(QUEUE, visibility_timeout=LEASE, max_attempts=5)
        kitchen.start_shops(url)
        await wait_for_shops(client, kitchen)
        state = State(
            orders=orders,
            seed=seed,
            url=url,
            opened=time.time(),
            shops={s.number: ShopState(s.number, s.pid) for s in kitchen.shops},
        )
        budget = 60.0 + 2.0 * sum(o.seconds for o in orders)
        with view:
            placing = asyncio.create_task(customers(client, state))
            try:
                await run_shop(client, kitchen, state, view, time.monotonic() + budget)
            finally:
                placing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await placing
            view.update(state, final=True)
        outcomes = await collect_outcomes(client, state)
        stats = await client.stats(QUEUE)
    # The shops finish, say goodbye, and their last records are read.
    for shop in kitchen.shops:
        _signal(shop.proc, signal.SIGTERM)
    for shop in kitchen.shops:
        await asyncio.to_thread(_reap, shop.proc, 8.0)
    records = []  # read again from the start: the audit's evidence is the files
    for number in state.shops:
        records += RecordTail(records_path(kitchen.directory, number)).read()
    result = audit(
        orders,
        state.placed,
        records,
        outcomes,
        killed_shop=state.killed,
        killed_at=state.killed_at,
        broker=stats,
    )
    view.audit(result, state)
    return 0 if result.passed else 1


def _make_view(live: bool) -> View:
    if not live:
        return View()
    try:
        from rich.console import Console
    except ImportError:
        print("(the live view needs rich: pip install 'conveyor-queue[server]')")
        return View()
    console = Console()
    if not console.is_terminal:
        return View()
    return LiveView(console)


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """Ctrl-C (or SIGTERM) while the children are stopped would leave some behind."""
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(orders: int = 150, shops: int = 3, live: bool = True, seed: int | None = None) -> int:
    """Run the pizza shop; 0 if the audit passed."""
    if orders < MIN_ORDERS:
        print(
            f"demo: --orders is at least {MIN_ORDERS} (the doomed shop must have pizzas to lose)",
            file=sys.stderr,
        )
        return 2
    if shops < 2:
        print("demo: --shops is at least 2 (one of them is killed)", file=sys.stderr)
        return 2
    if seed is None:
        seed = random.SystemRandom().randrange(1_000_000)
    plan = plan_orders(orders, seed)
    directory = Path(tempfile.mkdtemp(prefix="conveyor-demo-"))
    kitchen = Kitchen(directory, shops)
    view = _make_view(live)
    code = 1
    stopped_by: list[int] = []
    try:
        code = asyncio.run(_demo(kitchen, plan, seed, view, stopped_by))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted: closing the shops", file=sys.stderr)
        code = 128 + (stopped_by[0] if stopped_by else signal.SIGINT)
    except (DemoError, ConveyorError, OSError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        code = 2
    finally:
        with _no_interrupts():
            kitchen.stop()
            shutil.rmtree(directory, ignore_errors=True)
    print(f"(seed {seed}: `conveyor demo --orders {orders} --shops {shops} --seed {seed}`"
          " places the same orders)")  # fmt: skip
    return code
