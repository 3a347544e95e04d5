-- Conveyor PostgreSQL schema, version 1. Every object lives in the store's
-- own schema (the URL's ?schema=, "conveyor" by default), so several
-- installations can share one database.
--
-- messages: one row per message that is not yet acked. Same layout and
-- states as the SQLite store:
--   seq          the message id: (unix ms << 20) | counter, drawn from the
--                message_ids sequence by next_ids() (below), so ids are unique
--                across every node, time-ordered, and double as enqueue order.
--   state        0 ready, 1 scheduled (delayed / backing off), 2 leased,
--                3 dead (the queue's dead-letter list), 4 blocked (a grouped
--                message waiting behind the head of its group).
--   token        fencing token of the latest delivery; grows with every delivery.
--   holder       session of the latest delivery while its token is honoured:
--                kept when a lease expires or its session dies (a late ack with
--                the current token still succeeds), cleared by nack/dead/redrive.
--   bucket       bucket of the group (NULL without group).
-- Invariant: a group has at most one message in states 0/1/2 (its head); the
-- rest wait in state 4 and are promoted in seq order when the head finishes.
-- Unlike SQLite (one writer thread), concurrent transactions of several nodes
-- could both make a head: the unique index messages_group_head refuses the
-- second one, and an enqueue holds a FOR SHARE lock on the head it queues
-- behind, so the head cannot finish unseen by the promotion.
--
-- An acked message is deleted in the ack's own (batched) statement: nothing
-- finished stays behind for vacuum to find later, and the partial indexes
-- below only ever hold the rows of their state.
CREATE TABLE messages (
    seq bigint PRIMARY KEY,
    queue text NOT NULL,
    state smallint NOT NULL,
    priority smallint NOT NULL,
    available_at double precision NOT NULL,
    expires_at double precision,
    body bytea NOT NULL,
    headers bytea,  -- JSON object, NULL when empty
    dedup_key text,
    grp text,
    bucket integer,
    attempts integer NOT NULL DEFAULT 0,
    max_attempts integer,
    token bigint NOT NULL DEFAULT 0,
    holder text,
    lease_deadline double precision,
    enqueued_at double precision NOT NULL,
    last_error text,
    dead_reason text,
    dead_at double precision
);

-- Delivery order among ready messages: every claim walks one of these two
-- (FOR UPDATE SKIP LOCKED), the first when no group bucket is involved.
CREATE INDEX messages_ready_plain ON messages (queue, priority DESC, available_at, seq)
    WHERE state = 0 AND grp IS NULL;
CREATE INDEX messages_ready ON messages (queue, priority DESC, available_at, seq)
    WHERE state = 0;
-- Ready group heads, by bucket (is there grouped work at all?).
CREATE INDEX messages_ready_grouped ON messages (queue, bucket)
    WHERE state = 0 AND grp IS NOT NULL;
-- Delayed messages, by the time they become ready.
CREATE INDEX messages_scheduled ON messages (queue, available_at) WHERE state = 1;
-- Leases by deadline (the lease monitor) and by holder (session release, buckets).
CREATE INDEX messages_lease_deadline ON messages (lease_deadline) WHERE state = 2;
CREATE INDEX messages_holder ON messages (holder, queue, bucket) WHERE state = 2;
-- At most one head per group, and the heads by group.
CREATE UNIQUE INDEX messages_group_head ON messages (queue, grp)
    WHERE grp IS NOT NULL AND state IN (0, 1, 2);
-- The members waiting behind a head, in the order they will be promoted.
CREATE INDEX messages_group_blocked ON messages (queue, grp, seq) WHERE state = 4;
-- Dead letters of a queue, oldest first.
CREATE INDEX messages_dead ON messages (queue, seq) WHERE state = 3;
-- Time-to-live sweep.
CREATE INDEX messages_expiry ON messages (expires_at)
    WHERE expires_at IS NOT NULL AND state IN (0, 1, 4);
-- The hottest table: vacuum it early (where autovacuum is on at all).
ALTER TABLE messages SET (autovacuum_vacuum_scale_factor = 0.02,
                          autovacuum_vacuum_insert_scale_factor = 0.05,
                          autovacuum_analyze_scale_factor = 0.05);

-- message_ids: the last message id handed out. next_ids(n, floor) reserves
-- n consecutive ids, the first at least floor ((now ms) << 20), under a
-- transaction-level advisory lock. The store calls it in a transaction of its
-- own, committed without waiting for the WAL flush (synchronous_commit off):
-- the lock is held for microseconds, a sequence leaves no row versions
-- behind, and a message that uses the ids commits (and flushes the WAL up to
-- and past the sequence's record) after it anyway.
CREATE SEQUENCE message_ids AS bigint MINVALUE 0 START 0;

CREATE FUNCTION next_ids(n bigint, floor bigint) RETURNS bigint
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    base bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(1131376246, hashtext(current_schema() || '.message_ids'));
    SELECT greatest(last_value + 1, floor) INTO base FROM message_ids;
    PERFORM setval('message_ids', base + n - 1);
    RETURN base;
END
$$;

-- queues: configuration. The running totals live in queue_counts.
CREATE TABLE queues (
    name text PRIMARY KEY,
    config text NOT NULL,  -- JSON of the settings
    created_at double precision NOT NULL
);

-- queue_counts: per-queue deltas of the running totals, summed when read.
-- Each transaction appends its own row instead of updating one row per queue,
-- so claims and commits on several nodes never wait on each other for a
-- counter; the lease monitor folds them into one row per queue now and then.
-- depth counts messages in states 0, 1, 2 and 4 (max_length is checked
-- against it, under a FOR UPDATE lock of the queue's row).
CREATE TABLE queue_counts (
    queue text NOT NULL,
    depth bigint NOT NULL DEFAULT 0,
    enqueued bigint NOT NULL DEFAULT 0,
    delivered bigint NOT NULL DEFAULT 0,
    acked bigint NOT NULL DEFAULT 0,
    nacked bigint NOT NULL DEFAULT 0,
    dead bigint NOT NULL DEFAULT 0,
    expired bigint NOT NULL DEFAULT 0,
    lease_expired bigint NOT NULL DEFAULT 0
);
CREATE INDEX queue_counts_queue ON queue_counts (queue);

-- dedup: a dedup_key seen in a queue, until expires_at.
CREATE TABLE dedup (
    queue text NOT NULL,
    key text NOT NULL,
    seq bigint NOT NULL,
    expires_at double precision NOT NULL,
    PRIMARY KEY (queue, key)
);
CREATE INDEX dedup_expiry ON dedup (expires_at);

-- idempotency: replies to enqueues that carried a client-made key.
CREATE TABLE idempotency (
    key text PRIMARY KEY,
    reply bytea NOT NULL,
    expires_at double precision NOT NULL
);
CREATE INDEX idempotency_expiry ON idempotency (expires_at);

-- sessions: live consumer sessions of every node. A claim holds its
-- session's row FOR KEY SHARE until it commits, so closing a session
-- (deleting the row) waits for the claims in flight and then sees their
-- leases, while claims and heartbeats of one session do not wait on each other.
CREATE TABLE sessions (
    id text PRIMARY KEY,
    name text NOT NULL,
    capacity integer NOT NULL,
    timeout double precision NOT NULL,
    created_at double precision NOT NULL,
    last_seen double precision NOT NULL
);
-- session_counts: deliveries and acks per session, appended as delta rows
-- (so that nobody updates a session's row for them), folded by the monitor.
CREATE TABLE session_counts (
    session text NOT NULL,
    delivered bigint NOT NULL DEFAULT 0,
    acked bigint NOT NULL DEFAULT 0
);
CREATE INDEX session_counts_session ON session_counts (session);

-- consumers: which sessions receive from which queue, and when they last
-- tried to; only recent ones share the queue's group buckets.
CREATE TABLE consumers (
    session text NOT NULL,
    queue text NOT NULL,
    last_claim double precision NOT NULL,
    PRIMARY KEY (queue, session)
);
CREATE INDEX consumers_session ON consumers (session);

-- bucket_owners: one row per bucket of a queue, made with the queue; session
-- is the one that last took a grouped message from the bucket (NULL: none).
-- A claim locks the rows of the buckets it takes from (SKIP LOCKED), and
-- another session may take a bucket only once its owner holds no lease in it.
CREATE TABLE bucket_owners (
    queue text NOT NULL,
    bucket integer NOT NULL,
    session text,
    PRIMARY KEY (queue, bucket)
);
CREATE INDEX bucket_owners_session ON bucket_owners (session) WHERE session IS NOT NULL;

-- bindings: topic pattern -> queue.
CREATE TABLE bindings (
    pattern text NOT NULL,
    queue text NOT NULL,
    PRIMARY KEY (pattern, queue)
);

-- meta: facts about the store. 'epoch' counts the opens of the store by any
-- node; fencing tokens of deliveries made by a node start above its
-- epoch * 10^9.
CREATE TABLE meta (
    key text PRIMARY KEY,
    value bigint NOT NULL
);

-- results: what became of a finished message, until expires_at.
CREATE TABLE results (
    seq bigint PRIMARY KEY,
    status text NOT NULL,
    body bytea,
    error text,
    finished_at double precision NOT NULL,
    expires_at double precision NOT NULL
);
CREATE INDEX results_expiry ON results (expires_at);
