"""The PostgreSQL store's named queries, loaded from queries.sql."""

from __future__ import annotations

import dataclasses
from typing import LiteralString

from conveyor.store.sql import load_queries


@dataclasses.dataclass(frozen=True, slots=True)
class PostgresQueries:
    queue_insert: LiteralString
    owners_fill: LiteralString
    queue_get: LiteralString
    queue_lock_one: LiteralString
    queue_update: LiteralString
    groups_of_queue: LiteralString
    rebucket: LiteralString
    owners_reset: LiteralString
    owners_from_leases: LiteralString
    queues_all: LiteralString
    queue_delete: LiteralString
    messages_drop_queue: LiteralString
    dedup_drop_queue: LiteralString
    consumers_drop_queue: LiteralString
    owners_drop_queue: LiteralString
    bindings_drop_queue: LiteralString
    counts_drop_queue: LiteralString
    purge: LiteralString
    next_ids: LiteralString
    idempotency_find: LiteralString
    idempotency_put: LiteralString
    queues_share: LiteralString
    queues_lock: LiteralString
    queue_depths: LiteralString
    dedup_find: LiteralString
    dedup_claim: LiteralString
    heads_share: LiteralString
    messages_insert: LiteralString
    effects: LiteralString
    notify: LiteralString
    claim_begin: LiteralString
    buckets_lock: LiteralString
    buckets_free: LiteralString
    claim_plain: LiteralString
    claim_grouped: LiteralString
    ack_delete: LiteralString
    leases_lock: LiteralString
    retry: LiteralString
    unclaim: LiteralString
    extend: LiteralString
    kill: LiteralString
    promote_groups: LiteralString
    results_put: LiteralString
    release: LiteralString
    session_insert: LiteralString
    session_touch: LiteralString
    sessions_delete: LiteralString
    sessions_expired: LiteralString
    leases_of_sessions: LiteralString
    consumers_drop_sessions: LiteralString
    owners_drop_sessions: LiteralString
    session_counts_drop: LiteralString
    sessions_all: LiteralString
    leases_by_holder: LiteralString
    consumer_insert: LiteralString
    consumers_all: LiteralString
    consumers_of_queue: LiteralString
    leases_expired: LiteralString
    promote_due_all: LiteralString
    ttl_expired: LiteralString
    dedup_sweep: LiteralString
    idempotency_sweep: LiteralString
    results_sweep: LiteralString
    counts_fold: LiteralString
    session_counts_fold: LiteralString
    dead_page: LiteralString
    dead_lock: LiteralString
    group_has_head: LiteralString
    redrive_one: LiteralString
    results_delete: LiteralString
    binding_insert: LiteralString
    binding_delete: LiteralString
    bindings_all: LiteralString
    result_get: LiteralString
    stats: LiteralString
    epoch_next: LiteralString
    queues_many: LiteralString
    maintenance_lock: LiteralString
    maintenance_unlock: LiteralString
    vacuum: LiteralString
    vacuum_analyze: LiteralString


Q = load_queries("conveyor.store.postgres", "queries.sql", PostgresQueries)
