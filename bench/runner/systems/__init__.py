"""The systems, by the name ``--systems`` takes. Each adapter module is
imported only when its system runs, so a peer that is not installed fails
alone."""

from __future__ import annotations

import importlib

from bench.runner.systems.base import System

SYSTEMS: dict[str, str] = {
    "conveyor": "conveyor_system:ConveyorSystem",
    "celery-redis": "celery_system:CeleryRedis",
    "celery-rabbitmq": "celery_system:CeleryRabbitmq",
    "rq": "rq_system:RqSystem",
    "dramatiq-redis": "dramatiq_system:DramatiqRedis",
    "dramatiq-rabbitmq": "dramatiq_system:DramatiqRabbitmq",
    "huey": "huey_system:HueySystem",
    "arq": "arq_system:ArqSystem",
    "procrastinate": "procrastinate_system:ProcrastinateSystem",
    "pgqueuer": "pgqueuer_system:PgqueuerSystem",
}


def load(name: str) -> System:
    module_name, _, class_name = SYSTEMS[name].partition(":")
    module = importlib.import_module(f"{__name__}.{module_name}")
    system: System = getattr(module, class_name)()
    return system
