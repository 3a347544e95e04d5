"""Keeping a running task's lease (see the runtime's docstring).

A ``LeaseKeeper`` renews one delivery's lease every third of its length and
marks it lost when it could not be renewed before its deadline by this
process's clock. Until a renewal is due it is a timer, not a task: most
tasks end long before their first renewal, and a task per delivery (made,
scheduled, cancelled) was a fifth of a worker's CPU for short tasks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from conveyor.client.aio import Delivery
from conveyor.core.errors import ConveyorError, LeaseLost
from conveyor.worker.middleware.base import Execution

log = logging.getLogger("conveyor.worker")


class LeaseKeeper:
    def __init__(
        self,
        delivery: Delivery,
        execution: Execution,
        received: float,
        lost: Callable[[Execution], None],
    ) -> None:
        self.delivery = delivery
        self.execution = execution
        self.renewed = received  # when the lease was granted or last renewed
        self._lost = lost
        self._renewing: asyncio.Task[None] | None = None
        self._timer = self._arm()

    def cancel(self) -> None:
        self._timer.cancel()
        if self._renewing is not None:
            self._renewing.cancel()

    def _arm(self) -> asyncio.TimerHandle:
        due = self.renewed + self.delivery.lease / 3
        return asyncio.get_running_loop().call_later(max(0.0, due - time.monotonic()), self._due)

    def _due(self) -> None:
        self._renewing = asyncio.get_running_loop().create_task(self._renew())

    async def _renew(self) -> None:
        execution, lease = self.execution, self.delivery.lease
        deadline = execution.extra["lease_deadline"]
        asked = self.renewed = time.monotonic()
        if asked < deadline:
            try:
                await asyncio.wait_for(self.delivery.extend(lease), deadline - asked)
            except LeaseLost:
                pass
            except (TimeoutError, ConveyorError) as exc:
                log.info("renewing the lease of %s failed: %r", self.delivery.id, exc)
                self._timer = self._arm()  # again a third of a lease later, if still in time
                return
            else:
                execution.extra["lease_deadline"] = asked + lease
                self._timer = self._arm()
                return
        execution.ctx.mark_lease_lost()
        self._lost(execution)
        log.warning("lease of %s (%s) lost", self.delivery.id, execution.task.name)
