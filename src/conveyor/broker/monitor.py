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
import contextlib
import logging
from collections.abc import Awaitable, Callable

from conveyor.core.errors import ConveyorError
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
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="conveyor-lease-monitor"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

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
