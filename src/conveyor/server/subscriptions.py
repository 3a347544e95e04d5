"""The subscriptions (``consume``) of one native-protocol connection.

Each is a ``CreditedConsumer`` (broker/flow.py) whose deliveries are pushed
to the client as frames ``[3, sub, deliveries]``. Each receive it makes
reserves its reply bytes from the connection's budget (server/budget.py)
just before claiming; the push hands them to the connection, which counts
them until the socket has taken them. So a consumer that does not read stops
getting pushes once its connection's budget is full, and a push never
passes the frame limit.

The consumers' tasks belong to one TaskSet: ``stop_all`` cancels them when
the connection is lost, and ``close`` waits until they have ended.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.broker.flow import CreditedConsumer, return_credit
from conveyor.core import wire
from conveyor.core.errors import BrokerClosed, ConveyorError, InvalidArgument, SessionNotFound
from conveyor.core.tasks import TaskSet
from conveyor.core.types import Delivery
from conveyor.server.budget import Replies

if TYPE_CHECKING:
    from conveyor.server.connection import Connection


class Subscriptions:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.consumers: dict[int, CreditedConsumer] = {}
        self.replies: dict[int, Replies] = {}  # the reply bytes each has reserved
        self.next_sub = 1
        self.tasks = TaskSet("subscriptions")

    def __bool__(self) -> bool:
        return bool(self.consumers)

    async def consume(self, args: Any) -> dict[str, int]:
        if not isinstance(args, dict):
            raise InvalidArgument("consume needs {queue, prefetch}")
        queue, prefetch = args.get("queue"), args.get("prefetch", 1)
        if not isinstance(queue, str):
            raise InvalidArgument("consume needs a queue name")
        if (
            isinstance(prefetch, bool)
            or not isinstance(prefetch, int)
            or not 1 <= prefetch <= 10_000
        ):
            raise InvalidArgument("prefetch is an integer from 1 to 10000")
        sub_id = args.get("sub")
        if sub_id is None:  # the server chooses
            sub_id = self.next_sub
            while sub_id in self.consumers:
                sub_id += 1
            self.next_sub = sub_id + 1
        elif isinstance(sub_id, bool) or not isinstance(sub_id, int) or sub_id < 1:
            raise InvalidArgument("sub is a positive integer chosen by the client")
        elif sub_id in self.consumers:
            raise InvalidArgument(f"subscription {sub_id} is already open on this connection")
        conn = self.conn
        await conn.broker.get_queue(queue)
        session = await conn.session(prefetch)
        if sub_id in self.consumers:  # opened meanwhile by a pipelined twin
            raise InvalidArgument(f"subscription {sub_id} is already open on this connection")
        replies = Replies(conn.replies)
        sub = CreditedConsumer(
            conn.broker,
            session,
            queue,
            prefetch,
            lambda got: self._push(sub_id, got, replies),
            lambda exc: self._ended(sub_id, exc),
            conn.writable,
            replies,
            self.tasks,
        )
        self.consumers[sub_id] = sub
        self.replies[sub_id] = replies
        sub.start()
        return {"sub": sub_id}

    def cancel(self, args: Any) -> bool:
        sub_id = args.get("sub") if isinstance(args, dict) else None
        return isinstance(sub_id, int) and self._stop(sub_id)

    def return_credit(self, args: Any) -> None:
        """A settle of pushed deliveries: their credit comes back."""
        items = args.get("items") if isinstance(args, dict) else None
        if isinstance(items, list):
            ids = [i["id"] for i in items if isinstance(i, dict) and isinstance(i.get("id"), str)]
            return_credit(self.consumers, ids)

    def stop_all(self) -> None:
        for sub_id in list(self.consumers):
            self._stop(sub_id)

    async def close(self) -> None:
        """Stop every subscription and wait until their tasks have ended."""
        self.stop_all()
        await self.tasks.close()

    def _push(self, sub_id: int, got: list[Delivery], replies: Replies) -> None:
        reserved = replies.hand_over()
        for data in self._push_frames(sub_id, got):
            self.conn.send(data, reserved)
            reserved = 0

    def _push_frames(self, sub_id: int, got: list[Delivery]) -> list[bytes]:
        """The push of ``got``; in several frames if it would pass the limit
        (which the claim's byte budget already prevents: a last resort)."""
        data = wire.encode((wire.PUSH, sub_id, got))
        if len(data) - 4 <= self.conn.server.max_frame or len(got) == 1:
            return [data]
        half = len(got) // 2
        return self._push_frames(sub_id, got[:half]) + self._push_frames(sub_id, got[half:])

    def _stop(self, sub_id: int) -> bool:
        sub = self.consumers.pop(sub_id, None)
        replies = self.replies.pop(sub_id, None)
        if sub is not None:
            sub.stop()
        if replies is not None:  # what a claim the stop cut short had reserved
            self.conn.replies.release(replies.hand_over())
        return sub is not None

    def _ended(self, sub_id: int, exc: ConveyorError) -> None:
        self._stop(sub_id)
        if isinstance(exc, SessionNotFound | BrokerClosed):
            self.conn.abort()  # the session is gone: the client must start afresh
        else:  # the queue was deleted, say
            self.conn.send(wire.encode((wire.SUB_END, sub_id, exc.code, exc.message)))
