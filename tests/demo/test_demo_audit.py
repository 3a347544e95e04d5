"""The demo's audit, fed made-up records: it passes a clean run and fails
each kind of wrong one (a lost order, an order baked twice that the dead
shop never held, a grouped order baked twice or out of order, two shops at
one order at once, a result no record backs)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from conveyor.demo.audit import Audit, Outcome, Record, RecordTail, audit
from conveyor.demo.orders import DRINK, PIZZA, PRIORITY, URGENT, Order, plan_orders

KILLED = 3
KILLED_AT = 1000.5


def order(oid: str, group: str | None = None, seq: int | None = None) -> Order:
    return Order(oid, PIZZA, "margherita", "Ada", group, seq, 1.0, 0.0)


ORDERS = [
    order("o-1"),
    order("o-2"),
    order("o-3"),
    order("g-1", "customer:rossi", 1),
    order("g-2", "customer:rossi", 2),
]
PLACED = {o.id: 990.0 for o in ORDERS}


def bake(oid: str, shop: int, token: int, start: float, end: float | None = None) -> list[Record]:
    """A bake's records: start, and done unless ``end`` is None."""
    records = [Record("start", oid, shop, token, token, start, 1.0)]
    if end is not None:
        records.append(Record("done", oid, shop, token, token, end))
    return records


def clean() -> tuple[list[Record], dict[str, Outcome]]:
    """Shop 3 dies at 1000.5 baking o-3 (token 1); shop 1 bakes it again."""
    records = [
        *bake("o-1", 1, 1, 1000.0, 1001.0),
        *bake("o-2", 2, 1, 1000.0, 1001.0),
        *bake("o-3", KILLED, 1, 1000.0),
        *bake("o-3", 1, 2, 1001.0, 1002.0),
        *bake("g-1", 2, 1, 1001.0, 1002.0),
        *bake("g-2", 2, 1, 1002.5, 1003.5),
    ]
    outcomes = {
        "o-1": Outcome(True, 1, 1),
        "o-2": Outcome(True, 2, 1),
        "o-3": Outcome(True, 1, 2),
        "g-1": Outcome(True, 2, 1),
        "g-2": Outcome(True, 2, 1),
    }
    return records, outcomes


def run(
    records: Iterable[Record], outcomes: dict[str, Outcome], killed: int | None = KILLED
) -> Audit:
    return audit(
        ORDERS,
        PLACED,
        list(records),
        outcomes,
        killed_shop=killed,
        killed_at=KILLED_AT if killed else None,
    )


def failed(result: Audit) -> set[str]:
    return {c.label for c in result.checks if c.ok is False}


def test_a_clean_run_passes() -> None:
    result = run(*clean())
    assert result.passed, result.checks
    assert result.lost == []
    assert result.held == ["o-3"]
    assert result.rerouted == {"o-3": 1}
    assert result.twice == []
    assert result.grouped_in_order


def test_a_lost_order_fails() -> None:
    records, outcomes = clean()
    records = [r for r in records if r.order != "o-2"]
    del outcomes["o-2"]
    result = run(records, outcomes)
    assert not result.passed
    assert result.lost == ["o-2"]
    assert {"lost", "baked"} <= failed(result)


def test_an_order_baked_and_never_acked_is_lost() -> None:
    records, outcomes = clean()
    outcomes["o-1"] = Outcome(ok=False)  # no result at the broker: nobody handed it over
    result = run(records, outcomes)
    assert result.lost == ["o-1"]
    assert "lost" in failed(result)


def test_a_result_no_record_backs_is_not_a_bake() -> None:
    records, outcomes = clean()
    outcomes["o-1"] = Outcome(True, 2, 7)  # shop 2 never wrote a bake with token 7
    result = run(records, outcomes)
    assert result.lost == ["o-1"]


def test_a_duplicate_of_an_order_the_dead_shop_never_held_fails() -> None:
    records, outcomes = clean()
    records += bake("o-2", 1, 2, 1002.0, 1003.0)  # a second live shop baked it too
    result = run(records, outcomes)
    assert result.twice == ["o-2"]
    assert "baked twice" in failed(result)


def test_a_duplicate_of_what_the_dead_shop_held_is_allowed_if_ungrouped() -> None:
    # Shop 3 finished o-3 but died before its ack reached the broker: shop 1
    # baked it again, and the broker kept shop 1's result.
    records, outcomes = clean()
    records = [r for r in records if r.order != "o-3"]
    records += bake("o-3", KILLED, 1, 999.0, 1000.2)
    records += bake("o-3", 1, 2, 1001.0, 1002.0)
    # ... and o-1 was in its oven when it died: shop 1 baked that one after.
    records = [r for r in records if r.order != "o-1"]
    records += bake("o-1", KILLED, 1, 1000.1)
    records += bake("o-1", 1, 2, 1001.0, 1002.0)
    outcomes["o-1"] = Outcome(True, 1, 2)
    result = run(records, outcomes)
    assert result.twice == ["o-3"]
    assert result.passed, failed(result)


def test_a_duplicate_of_a_grouped_order_fails_even_from_the_dead_shop() -> None:
    records, outcomes = clean()
    records += bake("g-1", KILLED, 9, 999.0, 1000.0)
    result = run(records, outcomes)
    assert result.twice == ["g-1"]
    assert "baked twice" in failed(result)


def test_grouped_orders_out_of_order_fail() -> None:
    records, outcomes = clean()
    records = [r for r in records if r.order != "g-2"]
    records += bake("g-2", 1, 1, 1001.5, 1002.5)  # into the oven before g-1 was out
    result = run(records, outcomes)
    assert not result.grouped_in_order
    assert "grouped orders baked in order" in failed(result)


def test_two_shops_at_one_order_at_once_fail() -> None:
    records, outcomes = clean()
    # Shop 1 took o-3 again while the (not yet dead) shop 3 was still baking it.
    records = [r for r in records if not (r.order == "o-3" and r.shop == 1)]
    records += bake("o-3", 1, 2, 1000.2, 1001.2)
    result = run(records, outcomes)
    assert result.at_once == ["o-3"]
    assert "baked at two shops at once" in failed(result)


def test_a_kill_that_caught_nothing_in_the_oven_fails() -> None:
    records, outcomes = clean()
    records = [r for r in records if r.shop != KILLED]
    result = run(records, outcomes)
    assert "shop 3 killed while baking" in failed(result)
    assert "shop killed while baking" in failed(run(records, outcomes, killed=None))


def test_what_the_dead_shop_held_must_be_baked_elsewhere() -> None:
    records, outcomes = clean()
    records = [r for r in records if not (r.order == "o-3" and r.shop == 1)]
    del outcomes["o-3"]
    result = run(records, outcomes)
    assert result.lost == ["o-3"]
    assert "re-routed from the dead shop" in failed(result)


def test_record_tail_reads_whole_lines_only(tmp_path: Path) -> None:
    path = tmp_path / "shop-1.jsonl"
    tail = RecordTail(path)
    assert tail.read() == []
    line = '{"event":"start","order":"o-1","shop":1,"token":1,"attempt":1,"t":1.0}\n'
    path.write_text(line + line[:20])  # the second line is torn (the writer died)
    assert [r.order for r in tail.read()] == ["o-1"]
    with path.open("a") as f:
        f.write(line[20:])
    assert [r.order for r in tail.read()] == ["o-1"]
    assert tail.read() == []


def test_plans_are_reproducible_and_mixed() -> None:
    plan = plan_orders(150, seed=7)
    assert plan == plan_orders(150, seed=7)
    assert plan != plan_orders(150, seed=8)
    assert {o.kind for o in plan} == {URGENT, PIZZA, DRINK}
    assert {o.priority for o in plan} == set(PRIORITY.values())
    assert PRIORITY[URGENT] > PRIORITY[PIZZA] > PRIORITY[DRINK]
    groups: dict[str, list[Order]] = {}
    for o in plan:
        if o.group is not None:
            groups.setdefault(o.group, []).append(o)
    assert len(groups) >= 2
    for members in groups.values():  # placed in their order
        assert [o.seq for o in members] == list(range(1, len(members) + 1))
    assert [o.at for o in plan] == sorted(o.at for o in plan)
