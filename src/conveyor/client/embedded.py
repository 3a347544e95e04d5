"""The in-process transport: a Broker on an embedded store, in this process.

``Client("sqlite:///path.db")`` runs the broker on the client's own event
loop, with no server and no sockets (``Client("postgresql://...")`` too, as
one more node of a shared PostgreSQL store); every call goes through the same
operation table as the network front ends (conveyor.broker.operations), so
it behaves as a remote broker would. The client holds one consumer session
for all its receives and subscriptions, closed with the client.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from conveyor.broker import operations
from conveyor.broker.broker import Broker
from conveyor.broker.flow import CreditedConsumer, return_credit
from conveyor.client.transport import PushHandler
from conveyor.core.errors import BrokerClosed, ConveyorError, InvalidArgument
from conveyor.core.tasks import TaskSet
from conveyor.store.base import Store


class EmbeddedTransport:
    def __init__(self, store: Store, *, name: str = "") -> None:
        self.broker = Broker(store)
        self.name = name
        self.server_info: dict[str, Any] = {"server": "conveyor (embedded)"}
        self._session: str | None = None
        self._session_lock = asyncio.Lock()
        self._started = False
        self._subs: dict[int, CreditedConsumer] = {}
        self._next_sub = 1
        self._tasks = TaskSet("embedded client")  # the session's heartbeat

    async def connect(self) -> None:
        if not self._started:
            await self.broker.start()
            self._started = True

    async def close(self) -> None:
        self._tasks.cancel()
        await self._tasks.wait()
        for sub in self._subs.values():
            sub.stop()
        self._subs.clear()
        if self._started:
            self._started = False
            if self._session is not None:
                with contextlib.suppress(ConveyorError):
                    await self.broker.close_session(self._session)
            await self.broker.close()

    async def session(self, capacity: int = 1) -> str:
        async with self._session_lock:
            if self._session is None:
                self._session = await self.broker.open_session(self.name, capacity=max(1, capacity))
                self._tasks.spawn(self._beat(self._session))
            return self._session

    async def _beat(self, session: str) -> None:
        """Keep the session alive while this client lives (a busy consumer
        makes no receive calls that would do it)."""
        interval = self.broker.config.session_timeout / 4
        while True:
            await asyncio.sleep(interval)
            try:
                await self.broker.heartbeat(session)
            except ConveyorError:
                return

    async def call(self, op: str, args: dict[str, Any]) -> object:
        if not self._started:
            raise BrokerClosed("the client is not connected")
        if op in ("ack", "nack", "dead") and self._subs:
            return_credit(self._subs, [item["id"] for item in args["items"]])
        return await operations.call(self.broker, op, args, self)

    async def subscribe(self, queue: str, prefetch: int, handler: PushHandler) -> int:
        if not 1 <= prefetch <= 10_000:
            raise InvalidArgument("prefetch is an integer from 1 to 10000")
        await self.broker.get_queue(queue)
        session = await self.session(prefetch)
        sub_id = self._next_sub
        self._next_sub += 1
        sub = CreditedConsumer(self.broker, session, queue, prefetch, handler, handler)
        self._subs[sub_id] = sub
        sub.start()
        return sub_id

    async def unsubscribe(self, sub_id: int) -> None:
        sub = self._subs.pop(sub_id, None)
        if sub is not None:
            sub.stop()
