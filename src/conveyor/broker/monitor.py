"""The lease monitor: the pass that ends silent sessions and expired leases.

Every ``interval`` seconds it asks the store to sweep: sessions whose last
heartbeat is older than their timeout are closed and their leases released,
leases past their deadline are released, delayed messages that became due are
made ready, messages past their TTL are dead-lettered, and old dedup keys and
results are forgotten. The sweep callable (``Broker.sweep_once``) also wakes
the consumers waiting on what it changed. A failing sweep is logged and tried again on the
next tick; it never stops the monitor.

On a shared store every broker node runs its own monitor; each sweep is one
transaction, so two monitors never release the same lease twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from conveyor.core.errors import ConveyorError
from conveyor.core.tasks import TaskSet
from conveyor.store.base import Swept

log = logging.getLogger("conveyor.monitor")


class LeaseMonitor:
    def __init__(
        self,
        sweep: Callable[[], Awaitable[Swept]],
        interval: float,
    ) -> None:
        self._sweep = sweep
        self._interval = interval
        self._tasks: TaskSet | None = None  # while running: the one that sweeps

    def start(self) -> None:
        if self._tasks is None:
            self._tasks = TaskSet("conveyor-lease-monitor")
            self._tasks.spawn(self._run())

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, None
        if tasks is not None:
            await tasks.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._sweep()
            except asyncio.CancelledError:
                raise
            except ConveyorError as exc:  # the store is down, say: no traceback
                log.warning("lease monitor sweep failed (%s); retrying next tick", exc)
            except Exception:
                log.exception("lease monitor sweep failed; retrying next tick")
