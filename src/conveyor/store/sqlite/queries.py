"""The SQLite store's named queries, loaded from queries.sql."""

from __future__ import annotations

import dataclasses
from typing import LiteralString

from conveyor.store.sql import load_queries


@dataclasses.dataclass(frozen=True, slots=True)
class SqliteQueries:
    insert_message: LiteralString
    dedup_get: LiteralString
    dedup_put: LiteralString
    group_has_head: LiteralString
    queue_depth: LiteralString
    bump_counters: LiteralString
    session_exists: LiteralString
    promote_due: LiteralString
    has_ready_grouped: LiteralString
    claimable_buckets: LiteralString
    claim_plain: LiteralString
    claim_grouped: LiteralString
    own_bucket: LiteralString
    next_scheduled: LiteralString
    session_delivered: LiteralString
    session_acked: LiteralString
    ack_delete: LiteralString
    lease_get: LiteralString
    retry: LiteralString
    unclaim: LiteralString
    extend: LiteralString
    kill: LiteralString
    promote_group: LiteralString
    result_put: LiteralString
    result_get: LiteralString
    result_delete: LiteralString
    release: LiteralString
    leases_of_session: LiteralString
    leases_all: LiteralString
    leases_expired: LiteralString
    ttl_expired: LiteralString
    session_insert: LiteralString
    session_touch: LiteralString
    session_delete: LiteralString
    sessions_expired: LiteralString
    sessions_all: LiteralString
    sessions_clear: LiteralString
    leases_by_holder: LiteralString
    consumer_insert: LiteralString
    consumer_claimed: LiteralString
    consumer_queues: LiteralString
    consumers_all: LiteralString
    consumers_of_queue: LiteralString
    consumers_drop_session: LiteralString
    consumers_clear: LiteralString
    owners_drop_session: LiteralString
    owners_clear: LiteralString
    dedup_sweep: LiteralString
    idempotency_get: LiteralString
    idempotency_put: LiteralString
    idempotency_sweep: LiteralString
    results_sweep: LiteralString
    queue_insert: LiteralString
    queue_update: LiteralString
    groups_of_queue: LiteralString
    rebucket_group: LiteralString
    owners_from_leases: LiteralString
    queues_all: LiteralString
    queue_delete: LiteralString
    messages_drop_queue: LiteralString
    dedup_drop_queue: LiteralString
    consumers_drop_queue: LiteralString
    owners_drop_queue: LiteralString
    bindings_drop_queue: LiteralString
    purge: LiteralString
    purged: LiteralString
    dead_page: LiteralString
    dead_all: LiteralString
    dead_one: LiteralString
    redrive_one: LiteralString
    binding_insert: LiteralString
    binding_delete: LiteralString
    bindings_all: LiteralString
    oldest_ready: LiteralString
    count_consumers: LiteralString
    queue_counters: LiteralString
    epoch_get: LiteralString
    epoch_put: LiteralString
    max_seq: LiteralString


Q = load_queries("conveyor.store.sqlite", "queries.sql", SqliteQueries)
