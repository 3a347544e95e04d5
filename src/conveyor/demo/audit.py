"""The audit of ``conveyor demo``: what happened, read from evidence.

Every bake appends ``start`` and ``done`` records to its shop's file
(app.py), and every order's message carries the broker's result (which
shop's bake it committed). The audit checks them: nothing lost, nothing
baked twice except what the dead shop held, no order at two shops at once,
grouped orders in order, and the broker's own count. It never trusts a
counter of the demo's own.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from conveyor.core.types import QueueStats
from conveyor.demo.orders import DRINK, PIZZA, URGENT, Order

RULE_NOTE = "* but an ungrouped order the dead shop held: its result may have died with it"


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
