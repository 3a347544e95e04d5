"""The orders of ``conveyor demo``: what the customers order and when.

The same seed plans the same orders. Urgent pizzas go at priority 9, pizzas
at 5, drinks at 1; a few customers' orders share a group
(``customer:<family>``), so that they are baked in order, one at a time.
Each order is one message of the kitchen's ``prepare`` task (app.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from conveyor.core.types import NewMessage
from conveyor.demo.app import prepare

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
