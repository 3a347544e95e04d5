"""Dramatiq, on Redis (``dramatiq-redis``) and on RabbitMQ (``dramatiq-rabbitmq``).

Dramatiq acknowledges a message after its actor ran (its only mode). RabbitMQ:
``confirm_delivery=True`` (publisher confirms), and Dramatiq's own durable
queues and persistent messages. Redis: ``heartbeat_timeout`` 30 s (Dramatiq's
default is 60 s), after which the messages of a worker that stopped beating
are requeued by the maintenance that workers run now and then.

Workers: ``dramatiq <this module> --processes 1 --threads 8``, one such
command per worker process. Dramatiq has no bulk enqueue: W1b sends one by
one. The workers import this module; the broker kind comes from the
environment (``BENCH_DRAMATIQ_BROKER``), a stub broker when it is unset.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import dramatiq

from bench.runner.recorder import record
from bench.runner.systems.base import (
    LOCAL_REDIS,
    QUEUE_ENV,
    Producer,
    System,
    python_tool,
    rabbitmq_delete_queues,
    rabbitmq_version,
    redis_durability,
    redis_flush,
)

BROKER_ENV = "BENCH_DRAMATIQ_BROKER"
REDIS_URL = f"{LOCAL_REDIS}/12"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
HEARTBEAT_TIMEOUT_MS = 30_000


def _make_broker(kind: str) -> dramatiq.Broker:
    if kind == "redis":
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(url=REDIS_URL, heartbeat_timeout=HEARTBEAT_TIMEOUT_MS)
    if kind == "rabbitmq":
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=AMQP_URL, confirm_delivery=True)
    from dramatiq.brokers.stub import StubBroker

    return StubBroker()


broker = _make_broker(os.environ.get(BROKER_ENV, "stub"))
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="bench_task", queue_name=os.environ.get(QUEUE_ENV, "bench"))
def bench_task(body: dict[str, Any]) -> None:
    record(body)


class DramatiqProducer(Producer):
    def enqueue(self, body: dict[str, Any]) -> None:
        bench_task.send(body)

    def enqueue_many(self, bodies: list[dict[str, Any]]) -> None:
        for body in bodies:
            bench_task.send(body)

    def close(self) -> None:
        broker.close()


class DramatiqSystem(System):
    distribution = "dramatiq"
    pool = "threads"
    concurrency = 8
    kind: ClassVar[str]

    def env(self, queue: str) -> dict[str, str]:
        return {**super().env(queue), BROKER_ENV: self.kind}

    def worker_args(self, queue: str) -> list[str]:
        return python_tool("dramatiq", __name__, "--processes", "1",
                           "--threads", str(self.concurrency), "--queues", queue)  # fmt: skip

    def producer(self) -> Producer:
        return DramatiqProducer()


class DramatiqRedis(DramatiqSystem):
    name = "dramatiq-redis"
    kind = "redis"
    settings: ClassVar[dict[str, str]] = {
        "acknowledgement": "after the actor ran (Dramatiq's only mode)",
        "heartbeat_timeout": f"{HEARTBEAT_TIMEOUT_MS} ms",
        "broker": f"{REDIS_URL} (a Redis database of its own)",
    }
    redelivery = (
        f"a dead worker's messages are requeued once its heartbeat is {HEARTBEAT_TIMEOUT_MS}"
        " ms old, by the maintenance a live worker runs at random"
    )

    def start(self, work: Path) -> None:
        super().start(work)
        self.durability, self.server_version = redis_durability(REDIS_URL)
        redis_flush(REDIS_URL)

    def stop(self) -> None:
        redis_flush(REDIS_URL)

    def cleanup(self, queue: str) -> None:
        redis_flush(REDIS_URL)


class DramatiqRabbitmq(DramatiqSystem):
    name = "dramatiq-rabbitmq"
    kind = "rabbitmq"
    settings: ClassVar[dict[str, str]] = {
        "acknowledgement": "after the actor ran (Dramatiq's only mode)",
        "confirm_delivery": "True",
        "queues": "durable, messages persistent (Dramatiq's defaults)",
    }
    redelivery = "RabbitMQ requeues a dead consumer's unacknowledged messages at once"

    def start(self, work: Path) -> None:
        super().start(work)
        self.server_version = f"RabbitMQ {rabbitmq_version()}"
        self.durability = "RabbitMQ durable queue, persistent messages, publisher confirms"

    def cleanup(self, queue: str) -> None:
        rabbitmq_delete_queues([queue, f"{queue}.DQ", f"{queue}.XQ"])
