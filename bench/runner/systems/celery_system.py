"""Celery, on Redis (``celery-redis``) and on RabbitMQ (``celery-rabbitmq``).

Settings, the ones Celery documents for not losing tasks: ``task_acks_late``
(ack after the task ran), ``task_reject_on_worker_lost`` (a task whose pool
process died goes back to the queue), ``worker_prefetch_multiplier=1``;
results ignored (the benchmark does not read them). RabbitMQ: durable queue,
persistent messages (Celery's defaults) and publisher confirms
(``confirm_publish``). Redis: ``visibility_timeout`` 30 s (Celery's default
is one hour), after which a message not acknowledged is delivered again.

Workers: ``celery worker --pool prefork --concurrency 2`` (Celery's default
concurrency is the number of cores). The workers import this module as
``-A bench.runner.systems.celery_system``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, ClassVar

from celery import Celery

from bench.runner.recorder import record
from bench.runner.systems.base import (
    LOCAL_AMQP,
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

BROKER_ENV = "BENCH_CELERY_BROKER"
REDIS_URL = f"{LOCAL_REDIS}/10"
VISIBILITY_TIMEOUT = 30


def _make_app(broker: str) -> Celery:
    celery = Celery("bench", broker=broker, set_as_current=False)
    options: dict[str, Any] = (
        {"confirm_publish": True}
        if broker.startswith("amqp")
        else {"visibility_timeout": VISIBILITY_TIMEOUT}
    )
    celery.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=os.environ.get(QUEUE_ENV, "bench"),
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
    )
    return celery


app = _make_app(os.environ.get(BROKER_ENV, "memory://"))


@app.task(name="bench.task")
def bench_task(body: dict[str, Any]) -> None:
    record(body)


class CeleryProducer(Producer):
    def enqueue(self, body: dict[str, Any]) -> None:
        bench_task.apply_async((body,))

    def enqueue_many(self, bodies: list[dict[str, Any]]) -> None:
        with app.producer_or_acquire() as producer:
            for body in bodies:
                bench_task.apply_async((body,), producer=producer)


class CelerySystem(System):
    distribution = "celery"
    pool = "prefork"
    concurrency = 2
    bulk = "none: apply_async per task over one held producer"
    broker_url: ClassVar[str]

    def env(self, queue: str) -> dict[str, str]:
        return {**super().env(queue), BROKER_ENV: self.broker_url}

    def worker_args(self, queue: str) -> list[str]:
        node = f"bench-{uuid.uuid4().hex[:8]}@%h"
        return python_tool("celery", "-A", __name__, "worker", "-Q", queue, "-n", node,
                           "--pool", self.pool, "--concurrency", str(self.concurrency),
                           "--prefetch-multiplier", "1", "--loglevel", "WARNING")  # fmt: skip

    def producer(self) -> Producer:
        return CeleryProducer()


class CeleryRedis(CelerySystem):
    name = "celery-redis"
    broker_url = REDIS_URL
    settings: ClassVar[dict[str, str]] = {
        "task_acks_late": "True",
        "task_reject_on_worker_lost": "True",
        "worker_prefetch_multiplier": "1",
        "broker_transport_options": f"visibility_timeout={VISIBILITY_TIMEOUT}",
        "broker": f"{REDIS_URL} (a Redis database of its own)",
    }
    redelivery = (
        f"a task taken but not acknowledged is restored after the {VISIBILITY_TIMEOUT} s"
        " visibility timeout"
    )

    def start(self, work: Path) -> None:
        super().start(work)
        self.durability, self.server_version = redis_durability(REDIS_URL)
        redis_flush(REDIS_URL)

    def cleanup(self, queue: str) -> None:
        redis_flush(REDIS_URL)

    def stop(self) -> None:
        redis_flush(REDIS_URL)


class CeleryRabbitmq(CelerySystem):
    name = "celery-rabbitmq"
    broker_url = LOCAL_AMQP.replace("amqp://", "pyamqp://")
    settings: ClassVar[dict[str, str]] = {
        "task_acks_late": "True",
        "task_reject_on_worker_lost": "True",
        "worker_prefetch_multiplier": "1",
        "broker_transport_options": "confirm_publish=True",
        "queues": "durable, messages persistent (Celery's defaults)",
    }
    redelivery = "RabbitMQ requeues a dead consumer's unacknowledged messages at once"

    def start(self, work: Path) -> None:
        super().start(work)
        self.server_version = f"RabbitMQ {rabbitmq_version()}"
        self.durability = "RabbitMQ durable queue, persistent messages, publisher confirms"

    def cleanup(self, queue: str) -> None:
        rabbitmq_delete_queues([queue])
