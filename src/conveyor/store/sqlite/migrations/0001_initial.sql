-- Conveyor SQLite schema, version 1.
--
-- messages: one row per message that is not yet acked.
--   seq          the message id: (unix ms << 20) | counter, so ids are unique,
--                time-ordered and double as enqueue order.
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
CREATE TABLE messages (
    seq INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    state INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    available_at REAL NOT NULL,
    expires_at REAL,
    body BLOB NOT NULL,
    headers BLOB,  -- JSON object, NULL when empty
    dedup_key TEXT,
    grp TEXT,
    bucket INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER,
    token INTEGER NOT NULL DEFAULT 0,
    holder TEXT,
    lease_deadline REAL,
    enqueued_at REAL NOT NULL,
    last_error TEXT,
    dead_reason TEXT,
    dead_at REAL
);

-- Delivery order among ready messages.
CREATE INDEX messages_ready ON messages (queue, priority DESC, available_at, seq)
    WHERE state = 0;
-- Ready group heads, by bucket (which buckets a session may take from).
CREATE INDEX messages_ready_grouped ON messages (queue, bucket)
    WHERE state = 0 AND grp IS NOT NULL;
-- Delayed messages, by the time they become ready.
CREATE INDEX messages_scheduled ON messages (queue, available_at) WHERE state = 1;
-- Leases by deadline (the lease monitor) and by holder (session release, buckets).
CREATE INDEX messages_lease_deadline ON messages (lease_deadline) WHERE state = 2;
CREATE INDEX messages_holder ON messages (holder, queue, bucket) WHERE state = 2;
-- Group heads and their waiting members.
CREATE INDEX messages_group ON messages (queue, grp, state, seq) WHERE grp IS NOT NULL;
-- Dead letters of a queue, oldest first.
CREATE INDEX messages_dead ON messages (queue, seq) WHERE state = 3;
-- Time-to-live sweep.
CREATE INDEX messages_expiry ON messages (expires_at)
    WHERE expires_at IS NOT NULL AND state IN (0, 1, 4);

-- queues: configuration and running totals. depth counts messages in states
-- 0, 1, 2 and 4 (max_length is checked against it).
CREATE TABLE queues (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    created_at REAL NOT NULL,
    depth INTEGER NOT NULL DEFAULT 0,
    enqueued_total INTEGER NOT NULL DEFAULT 0,
    delivered_total INTEGER NOT NULL DEFAULT 0,
    acked_total INTEGER NOT NULL DEFAULT 0,
    nacked_total INTEGER NOT NULL DEFAULT 0,
    dead_total INTEGER NOT NULL DEFAULT 0,
    expired_total INTEGER NOT NULL DEFAULT 0,
    lease_expired_total INTEGER NOT NULL DEFAULT 0
);

-- dedup: a dedup_key seen in a queue, until expires_at.
CREATE TABLE dedup (
    queue TEXT NOT NULL,
    key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (queue, key)
) WITHOUT ROWID;
CREATE INDEX dedup_expiry ON dedup (expires_at);

-- idempotency: replies to enqueues that carried a client-made key, so that a
-- producer retrying after a lost connection gets the first reply instead of
-- a second copy of its messages.
CREATE TABLE idempotency (
    key TEXT PRIMARY KEY,
    reply BLOB NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX idempotency_expiry ON idempotency (expires_at);

-- sessions: live consumer sessions, with the queues they consume.
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    capacity INTEGER NOT NULL,
    timeout REAL NOT NULL,
    created_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    delivered_total INTEGER NOT NULL DEFAULT 0,
    acked_total INTEGER NOT NULL DEFAULT 0
);
-- consumers: which sessions receive from which queue, and when they last
-- tried to; only recent ones share the queue's group buckets.
CREATE TABLE consumers (
    session TEXT NOT NULL,
    queue TEXT NOT NULL,
    last_claim REAL NOT NULL,
    PRIMARY KEY (queue, session)
) WITHOUT ROWID;

-- bucket_owners: the session that last took a grouped message from a bucket.
-- Another session may take the bucket only once that one holds no lease in it.
CREATE TABLE bucket_owners (
    queue TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    session TEXT NOT NULL,
    PRIMARY KEY (queue, bucket)
) WITHOUT ROWID;

-- bindings: topic pattern -> queue.
CREATE TABLE bindings (
    pattern TEXT NOT NULL,
    queue TEXT NOT NULL,
    PRIMARY KEY (pattern, queue)
) WITHOUT ROWID;

-- meta: facts about the store. 'epoch' counts the opens of the store; fencing
-- tokens of deliveries made after an open start above epoch * 10^9.
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value
) WITHOUT ROWID;

-- results: what became of a finished message, until expires_at.
CREATE TABLE results (
    seq INTEGER PRIMARY KEY,
    status TEXT NOT NULL,
    body BLOB,
    error TEXT,
    finished_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX results_expiry ON results (expires_at);
