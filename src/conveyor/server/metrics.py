"""/metrics in the Prometheus text format (version 0.0.4).

Queue depths by state and running totals come from the store's statistics
(so they are right on every broker node of a shared store); the store's own
figures (group commits, operations per commit, commit/fsync time) come from
``Store.metrics()`` and describe this process.
"""

from __future__ import annotations

from conveyor.broker.broker import Broker

_QUEUE_TOTALS = (
    ("enqueued_total", "messages enqueued"),
    ("delivered_total", "deliveries (leases handed out)"),
    ("acked_total", "messages acknowledged"),
    ("nacked_total", "negative acknowledgements"),
    ("dead_total", "messages dead-lettered"),
    ("expired_total", "messages dead-lettered for their TTL"),
    ("lease_expired_total", "leases released by expiry or session end"),
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


async def render_metrics(broker: Broker) -> str:
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")

    stats = [await broker.stats(q.name) for q in await broker.queues()]
    family("conveyor_queue_messages", "gauge", "messages in a queue by state")
    for s in stats:
        for state in ("ready", "scheduled", "leased", "dead"):
            labels = f'queue="{_label(s.queue)}",state="{state}"'
            lines.append(f"conveyor_queue_messages{{{labels}}} {getattr(s, state)}")
    family("conveyor_queue_oldest_ready_seconds", "gauge", "age of the oldest ready message")
    for s in stats:
        age = s.oldest_ready_age or 0.0
        lines.append(f'conveyor_queue_oldest_ready_seconds{{queue="{_label(s.queue)}"}} {age:.3f}')
    family("conveyor_queue_consumers", "gauge", "consumer sessions of a queue")
    for s in stats:
        lines.append(f'conveyor_queue_consumers{{queue="{_label(s.queue)}"}} {s.consumers}')
    for field, help_text in _QUEUE_TOTALS:
        name = f"conveyor_queue_{field}"
        family(name, "counter", help_text)
        for s in stats:
            lines.append(f'{name}{{queue="{_label(s.queue)}"}} {getattr(s, field)}')
    family("conveyor_sessions", "gauge", "live consumer sessions")
    lines.append(f"conveyor_sessions {len(await broker.sessions())}")
    for key, value in sorted(broker.store.metrics().items()):
        kind = "counter" if key.endswith("_total") else "gauge"
        family(f"conveyor_store_{key}", kind, f"store: {key.replace('_', ' ')}")
        # Every digit: "%g" would print a counter past 999999 as 1e+06.
        lines.append(f"conveyor_store_{key} {value if isinstance(value, int) else repr(value)}")
    return "\n".join(lines) + "\n"
