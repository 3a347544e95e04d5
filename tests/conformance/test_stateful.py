"""The contract, run by a hypothesis state machine on every store
(stateful_machine.py: its rules; stateful_model.py: the model it is held
to), and fixed runs of the same machine through paths that random runs
reach only now and then.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from stateful_machine import BrokerMachine
from stateful_model import ACKED, BUCKETS, QUEUE, Msg, Spec
from stateful_stores import ExampleStores

from conveyor.core.ring import bucket_owners

# Shrinking a failing run replays thousands of examples; give it time to
# finish rather than report a timeout.
pytestmark = pytest.mark.timeout(1800)

# How many examples each store runs, 40 steps each. One costs about 30-50 ms
# on SQLite in memory, 100 ms on a file (fsyncs), 300-400 ms on PostgreSQL
# (every step a few round trips, and the checks after it three more),
# measured on the 2-core machine: about 0.5-1, 1 and 2 minutes, so
# PostgreSQL runs fewer. (These, with PostgreSQL at 600, passed in 14 minutes under a
# load of 8.) CONVEYOR_STATEFUL_SCALE multiplies them: 10 for a long hunt,
# 0.05 in the mutation runs (scripts/mutation.sh).
EXAMPLES = {"sqlite-memory": 1200, "sqlite-file": 600, "postgres": 300}
SCALE = float(os.environ.get("CONVEYOR_STATEFUL_SCALE", "1"))


@pytest.fixture
def stores(store_factory: Any) -> Any:
    loop = asyncio.new_event_loop()
    stores = ExampleStores(store_factory, loop)
    try:
        yield stores
    finally:
        try:
            loop.run_until_complete(stores.close())
        finally:
            loop.close()


def test_the_broker_keeps_the_contract(stores: ExampleStores) -> None:
    run_state_machine_as_test(
        lambda: BrokerMachine(stores),
        settings=settings(
            max_examples=max(1, round(EXAMPLES[stores.kind] * SCALE)),
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def fixed_run(stores: ExampleStores) -> BrokerMachine:
    machine = BrokerMachine(stores)
    machine.clean = False
    return machine


def test_a_joining_session_waits_for_the_bucket_it_now_owns(stores: ExampleStores) -> None:
    """A fixed run of the machine through the bucket hand-over, which random
    runs reach only now and then: the first consumer holds a message of bucket
    0, a second consumer joins and becomes its owner by the ring, and must not
    get another group of that bucket until the first lets go."""
    machine = fixed_run(stores)
    try:
        machine.open_session(1)
        machine.open_session(1)
        first, second = list(machine.model.sessions)
        assert bucket_owners({first: 1.0, second: 1.0}, QUEUE, BUCKETS)[0] == second
        machine.enqueue([Spec(group="g0"), Spec(group="g2"), Spec()])
        machine.broker_agrees_with_the_model()
        machine.do_receive(first, 1)  # alone, it owns every bucket: it gets g0
        machine.broker_agrees_with_the_model()
        machine.do_receive(second, 3)  # bucket 0 is still busy: only the plain one
        machine.broker_agrees_with_the_model()
        assert [m.holder for m in machine.model.msgs.values()] == [first, None, second]
        held = machine.model.held()
        machine.settle(held[0], "ack", "latest", None)
        machine.broker_agrees_with_the_model()
        machine.do_receive(second, 3)  # now bucket 0 moves: g2 goes to its new owner
        machine.broker_agrees_with_the_model()
        assert [m.holder for m in machine.model.msgs.values()] == [None, second, second]
        machine.clean = True
    finally:
        machine.teardown()


def test_a_group_s_next_message_in_a_later_call_waits_for_its_head(
    stores: ExampleStores,
) -> None:
    """Each message of a group in a call of its own, the later ones while the
    head is leased: none goes out before the one ahead of it is acked or
    dead-lettered."""
    machine = fixed_run(stores)
    try:
        machine.open_session(1)
        (sid,) = machine.model.sessions
        machine.enqueue([Spec(group="g1")])
        machine.do_receive(sid, 3)
        machine.enqueue([Spec(group="g1", priority=3)])  # after the head was delivered
        machine.enqueue([Spec(group="g1")])
        machine.rows_agree_with_the_model()
        machine.do_receive(sid, 3)  # nothing: the head is still out
        first, second, third = machine.model.msgs.values()
        assert (first.holder, second.holder, third.holder) == (sid, None, None)
        machine.settle(machine.model.held()[0], "dead", "latest", None)
        machine.do_receive(sid, 3)  # the head is dead: the second leads, alone
        assert (second.holder, third.holder) == (sid, None)
        machine.settle(machine.model.held()[0], "ack", "latest", None)
        machine.do_receive(sid, 3)
        assert third.holder == sid
        machine.broker_agrees_with_the_model()
        machine.rows_agree_with_the_model()
        machine.clean = True
    finally:
        machine.teardown()


@pytest.mark.stores("sqlite-file", "postgres")  # nothing survives a restart of memory
def test_a_restart_keeps_every_message_and_settles_leases_by_the_store_s_rule(
    stores: ExampleStores,
) -> None:
    """Messages in every state, then a restart: nothing is lost, the acked one
    stays gone, and the lease held at the restart ends (SQLite: a late ack
    with its token still succeeds) or stands (PostgreSQL)."""
    machine = fixed_run(stores)
    try:
        machine.open_session(1)
        (sid,) = machine.model.sessions
        machine.enqueue([Spec(), Spec(group="g0"), Spec(group="g0"), Spec(delay=3.0)])
        machine.enqueue([Spec(dedup_key="k0", ttl=30.0)])
        machine.do_receive(sid, 3)
        acked, held, _ = (d for d in machine.model.deliveries)
        machine.settle(acked, "ack", "latest", None)
        machine.restart()
        machine.broker_agrees_with_the_model()
        machine.rows_agree_with_the_model()
        machine.enqueue([Spec(dedup_key="k0")])  # still a duplicate: dedup keys survive
        m: Msg = machine.model.msgs[held[0]]
        assert (m.holder is None) != stores.sessions_survive_restart
        machine.settle(held, "ack", "latest", None)  # honoured either way
        assert m.status == ACKED
        machine.broker_agrees_with_the_model()
        machine.clean = True
    finally:
        machine.teardown()
