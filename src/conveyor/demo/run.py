"""``conveyor demo``: the pizza shop, in one command.

A broker and ``--shops`` shop workers in child processes (processes.py).
Customers place orders over the first seconds (orders.py). Partway through,
the last shop is killed with SIGKILL while it has pizzas in the oven; the
broker sees its connection drop, releases its leases, and the other shops
bake those orders. The run ends with the audit (audit.py); the exit code is
0 only if it passes.

Every child process and the temporary directory are removed on the way out,
Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from conveyor.client.aio import AsyncClient
from conveyor.core.errors import ConveyorError, ResultTimeout
from conveyor.core.tasks import TaskSet
from conveyor.core.types import ResultStatus
from conveyor.demo.app import QUEUE, records_path
from conveyor.demo.audit import Outcome, RecordTail, audit
from conveyor.demo.orders import Order, order_message, plan_orders
from conveyor.demo.processes import (
    CONCURRENCY,
    STARTUP_TIMEOUT,
    DemoError,
    Kitchen,
    Shop,
    log_tail,
    reap,
    signal_child,
)
from conveyor.demo.state import ShopState, State, absorb
from conveyor.demo.views import View, make_view

LEASE = 5.0  # the queue's visibility timeout: a lease the runtime renews while a bake runs
KILL_AFTER = 0.3  # the last shop is killed once this share of the orders is baked
TICK = 0.1  # seconds between looks at the broker and the shops' records
MIN_ORDERS = 20  # fewer, and the doomed shop may have nothing in its oven to lose


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
                raise DemoError(f"shop {shop.number} exited:\n{log_tail(shop.log)}")
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
            placing = TaskSet("demo customers")
            placing.spawn(customers(client, state))
            try:
                await run_shop(client, kitchen, state, view, time.monotonic() + budget)
            finally:
                await placing.close()
            view.update(state, final=True)
        outcomes = await collect_outcomes(client, state)
        stats = await client.stats(QUEUE)
    # The shops finish, say goodbye, and their last records are read.
    for shop in kitchen.shops:
        signal_child(shop.proc, signal.SIGTERM)
    for shop in kitchen.shops:
        await asyncio.to_thread(reap, shop.proc, 8.0)
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
    view = make_view(live)
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
