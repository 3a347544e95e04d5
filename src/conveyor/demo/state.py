"""What ``conveyor demo`` knows while it runs: the shops, the orders placed,
the events of the run; and how the shops' new records change it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from conveyor.core.errors import ConveyorError
from conveyor.core.types import QueueStats, SessionInfo
from conveyor.demo.audit import Record
from conveyor.demo.orders import Order


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
