-- Named queries of the PostgreSQL store. Table layout: migrations/0001_initial.sql.
-- States: 0 ready, 1 scheduled, 2 leased, 3 dead, 4 blocked behind its group.
-- Batches travel as parallel arrays through unnest(): one statement, one
-- round trip, whatever the batch size.

-- == queues ==================================================================

-- name: queue_insert
INSERT INTO queues (name, config, created_at) VALUES ($1, $2, $3)
ON CONFLICT (name) DO NOTHING
RETURNING name;

-- name: owners_fill
-- One bucket_owners row per bucket, so that a claim can lock them.
INSERT INTO bucket_owners (queue, bucket)
SELECT $1, b FROM generate_series(0, $2::integer - 1) AS b
ON CONFLICT DO NOTHING;

-- name: queue_get
SELECT name, config, created_at FROM queues WHERE name = $1;

-- name: queue_lock_one
-- Waits for the enqueues in flight (they hold the row FOR KEY SHARE).
SELECT config FROM queues WHERE name = $1 FOR UPDATE;

-- name: queue_update
UPDATE queues SET config = $2 WHERE name = $1;

-- name: groups_of_queue
SELECT DISTINCT grp FROM messages WHERE queue = $1 AND grp IS NOT NULL;

-- name: rebucket
-- The bucket count changed: every group of the queue hashes anew.
UPDATE messages AS m SET bucket = g.bucket
FROM unnest($2::text[], $3::integer[]) AS g(grp, bucket)
WHERE m.queue = $1 AND m.grp = g.grp AND m.bucket IS DISTINCT FROM g.bucket;

-- name: owners_reset
-- ...and each bucket is owned by the session holding a lease in it, if any
-- (grouped leases are at most one per group).
WITH gone AS (DELETE FROM bucket_owners WHERE queue = $1 AND bucket >= $2),
cleared AS (UPDATE bucket_owners SET session = NULL WHERE queue = $1 AND bucket < $2)
SELECT 1;

-- name: owners_from_leases
UPDATE bucket_owners AS o SET session = l.holder
FROM (SELECT DISTINCT ON (bucket) bucket, holder FROM messages
      WHERE queue = $1 AND state = 2 AND grp IS NOT NULL ORDER BY bucket, seq) AS l
WHERE o.queue = $1 AND o.bucket = l.bucket;

-- name: queues_all
SELECT name, config, created_at FROM queues ORDER BY name;

-- name: queue_delete
-- First, so that enqueues in flight (holding the row FOR KEY SHARE) finish
-- before the queue's messages are deleted, and later ones find no queue.
DELETE FROM queues WHERE name = $1 RETURNING name;

-- name: messages_drop_queue
DELETE FROM messages WHERE queue = $1;

-- name: dedup_drop_queue
DELETE FROM dedup WHERE queue = $1;

-- name: consumers_drop_queue
DELETE FROM consumers WHERE queue = $1;

-- name: owners_drop_queue
DELETE FROM bucket_owners WHERE queue = $1;

-- name: bindings_drop_queue
DELETE FROM bindings WHERE queue = $1;

-- name: counts_drop_queue
DELETE FROM queue_counts WHERE queue = $1;

-- name: purge
DELETE FROM messages WHERE queue = $1 AND state IN (0, 1, 4)
RETURNING grp, state;

-- == enqueue =================================================================

-- name: next_ids
-- In a transaction of its own (see next_ids in the schema).
SELECT set_config('synchronous_commit', 'off', true), next_ids($1, $2);

-- name: idempotency_find
SELECT i.key, i.reply FROM idempotency AS i
JOIN unnest($1::text[], $2::float8[]) AS k(key, now)
  ON i.key = k.key AND i.expires_at > k.now;

-- name: idempotency_put
-- A key that another node stored meanwhile is not replaced (no row returned).
INSERT INTO idempotency AS i (key, reply, expires_at)
SELECT * FROM unnest($1::text[], $2::bytea[], $3::float8[])
ON CONFLICT (key) DO UPDATE SET reply = excluded.reply, expires_at = excluded.expires_at
WHERE i.expires_at <= $4
RETURNING key;

-- name: queues_share
-- The queues an enqueue writes to, and their settings, stay as they are
-- until it commits (delete_queue and configure_queue wait for it: FOR UPDATE
-- and DELETE conflict with KEY SHARE; a plain UPDATE of the row does not).
SELECT name, config FROM queues WHERE name = ANY($1::text[]) ORDER BY name FOR KEY SHARE;

-- name: queues_lock
-- Queues with a max_length: one enqueue at a time checks and adds to the depth.
SELECT name, config FROM queues WHERE name = ANY($1::text[]) ORDER BY name FOR UPDATE;

-- name: queue_depths
SELECT queue, sum(depth)::bigint FROM queue_counts WHERE queue = ANY($1::text[]) GROUP BY queue;

-- name: dedup_find
SELECT d.queue, d.key, d.seq FROM dedup AS d
JOIN unnest($1::text[], $2::text[], $3::float8[]) AS k(queue, key, now)
  ON d.queue = k.queue AND d.key = k.key AND d.expires_at > k.now;

-- name: dedup_claim
-- A key that another node stored meanwhile is not replaced (no row returned).
INSERT INTO dedup AS d (queue, key, seq, expires_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::float8[])
ON CONFLICT (queue, key) DO UPDATE SET seq = excluded.seq, expires_at = excluded.expires_at
WHERE d.expires_at <= $5
RETURNING queue, key;

-- name: heads_share
-- The heads new group members queue behind: FOR SHARE, so the head cannot be
-- acked or dead-lettered (and its group promoted) before they are committed.
SELECT m.queue, m.grp FROM messages AS m
JOIN unnest($1::text[], $2::text[]) AS g(queue, grp) ON m.queue = g.queue AND m.grp = g.grp
WHERE m.grp IS NOT NULL AND m.state IN (0, 1, 2)
FOR SHARE OF m;

-- name: messages_insert
-- A group head that another transaction beat to it is left out (and then
-- inserted as blocked); the answer: rows inserted, heads among them.
WITH ins AS (
    INSERT INTO messages (seq, queue, state, priority, available_at, expires_at, body, headers,
                          dedup_key, grp, bucket, max_attempts, enqueued_at)
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::smallint[], $4::smallint[],
                         $5::float8[], $6::float8[], $7::bytea[], $8::bytea[], $9::text[],
                         $10::text[], $11::integer[], $12::integer[], $13::float8[])
    ON CONFLICT (queue, grp) WHERE grp IS NOT NULL AND state IN (0, 1, 2) DO NOTHING
    RETURNING seq, grp, state)
SELECT count(*), coalesce(array_agg(seq) FILTER (WHERE grp IS NOT NULL AND state <> 4), ARRAY[]::bigint[])
FROM ins;

-- name: effects
-- The end of a transaction: per-queue deltas of the totals, acks per session.
WITH counted AS (
    INSERT INTO queue_counts (queue, depth, enqueued, delivered, acked, nacked, dead, expired,
                              lease_expired)
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[],
                         $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[]))
INSERT INTO session_counts (session, acked)
SELECT * FROM unnest($10::text[], $11::bigint[]);

-- name: notify
-- "node queue" notifications, in a transaction of their own after the
-- commits they announce, committed without waiting for the WAL flush:
-- NOTIFY serialises the commits of every notifying transaction of the server.
SELECT set_config('synchronous_commit', 'off', true), count(pg_notify($1, p))
FROM unnest($2::text[]) AS p;

-- == claim ===================================================================

-- name: claim_begin
-- Before a claim, in a transaction of its own (committed without waiting for
-- the WAL flush: all of it is made again by the next claim or sweep): marks
-- the consumer (registering it again if its row went with a queue another
-- node deleted and made again), makes the queue's due messages ready, and
-- reads the queue's settings, whether the session lives, whether a group head
-- is ready, and when the next scheduled message is due.
WITH c AS (INSERT INTO consumers (session, queue, last_claim)
           SELECT $2, $1, $3
           WHERE EXISTS (SELECT 1 FROM queues WHERE name = $1)
             AND EXISTS (SELECT 1 FROM sessions WHERE id = $2)
           ON CONFLICT (queue, session) DO UPDATE SET last_claim = excluded.last_claim
           WHERE consumers.last_claim < excluded.last_claim),
due AS (UPDATE messages SET state = 0
        WHERE seq IN (SELECT seq FROM messages
                      WHERE queue = $1 AND state = 1 AND available_at <= $3
                      ORDER BY available_at LIMIT $4 FOR UPDATE SKIP LOCKED)
        RETURNING grp)
SELECT (SELECT config FROM queues WHERE name = $1),
       EXISTS (SELECT 1 FROM sessions WHERE id = $2),
       EXISTS (SELECT 1 FROM messages WHERE queue = $1 AND state = 0 AND grp IS NOT NULL)
       OR EXISTS (SELECT 1 FROM due WHERE grp IS NOT NULL),
       (SELECT count(*) FROM due),
       (SELECT min(available_at) FROM messages WHERE queue = $1 AND state = 1
        AND available_at > $3),
       set_config('synchronous_commit', 'off', true);

-- name: buckets_lock
SELECT bucket FROM bucket_owners WHERE queue = $1 AND bucket = ANY($2::integer[])
FOR NO KEY UPDATE SKIP LOCKED;

-- name: buckets_free
-- Of the buckets locked above: those no other session still holds a lease in.
SELECT o.bucket FROM bucket_owners AS o
WHERE o.queue = $1 AND o.bucket = ANY($2::integer[])
  AND (o.session IS NULL OR o.session = $3
       OR NOT EXISTS (SELECT 1 FROM messages AS l
                      WHERE l.state = 2 AND l.holder = o.session AND l.queue = $1
                        AND l.bucket = o.bucket));

-- name: claim_plain
-- One statement: holds the session's row FOR KEY SHARE (so that a close of
-- the session, which deletes the row first, waits for this claim and then
-- sees its leases), leases the first ready messages that no other claim is taking,
-- and records it. A claim that leased nothing answers one row of NULLs and
-- commits without waiting for the WAL flush; a lease grant always waits.
-- Of the $3 messages picked, only as many are leased as fit in $7 bytes, each
-- counted as its body, its headers and $8 (the store's MESSAGE_OVERHEAD); the
-- first always is, so that every message leased is sent. octet_length reads a
-- TOASTed body's size from its pointer: the body itself is not fetched. The
-- rows picked but left stay locked until the claim commits, and other claims
-- skip them meanwhile.
WITH s AS (SELECT id FROM sessions WHERE id = $4 FOR KEY SHARE),
picked AS (
    SELECT seq, priority, available_at,
           octet_length(body) + coalesce(octet_length(headers), 0) + $8 AS size
    FROM messages
    WHERE queue = $1 AND state = 0 AND grp IS NULL AND (expires_at IS NULL OR expires_at > $2)
      AND EXISTS (SELECT 1 FROM s)
    ORDER BY priority DESC, available_at, seq LIMIT $3
    FOR UPDATE SKIP LOCKED),
fitting AS (
    SELECT seq FROM (
        SELECT seq, row_number() OVER w AS n, sum(size) OVER w AS running FROM picked
        WINDOW w AS (ORDER BY priority DESC, available_at, seq ROWS UNBOUNDED PRECEDING)) AS r
    WHERE n = 1 OR running <= $7),
claimed AS (
    UPDATE messages AS m
    SET state = 2, holder = $4, token = greatest(m.token + 1, $5), attempts = m.attempts + 1,
        lease_deadline = $6
    FROM fitting WHERE m.seq = fitting.seq
    RETURNING m.seq, m.body, m.headers, m.priority, m.grp, m.attempts, m.max_attempts, m.token,
              m.enqueued_at, m.available_at, m.bucket),
counted AS (
    INSERT INTO queue_counts (queue, delivered)
    SELECT $1, count(*) FROM claimed HAVING count(*) > 0),
delivered AS (
    INSERT INTO session_counts (session, delivered)
    SELECT $4, count(*) FROM claimed HAVING count(*) > 0),
seen AS (
    UPDATE sessions SET last_seen = $2
    WHERE id = $4 AND last_seen < $2 AND EXISTS (SELECT 1 FROM claimed))
SELECT * FROM claimed
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
FROM (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed
WHERE NOT EXISTS (SELECT 1 FROM claimed);

-- name: claim_grouped
-- The same, with the group heads of the buckets locked above ($9); the
-- session becomes the owner of the buckets it took from.
WITH s AS (SELECT id FROM sessions WHERE id = $4 FOR KEY SHARE),
picked AS (
    SELECT seq, priority, available_at,
           octet_length(body) + coalesce(octet_length(headers), 0) + $8 AS size
    FROM messages
    WHERE queue = $1 AND state = 0 AND (expires_at IS NULL OR expires_at > $2)
      AND (grp IS NULL OR bucket = ANY($9::integer[])) AND EXISTS (SELECT 1 FROM s)
    ORDER BY priority DESC, available_at, seq LIMIT $3
    FOR UPDATE SKIP LOCKED),
fitting AS (
    SELECT seq FROM (
        SELECT seq, row_number() OVER w AS n, sum(size) OVER w AS running FROM picked
        WINDOW w AS (ORDER BY priority DESC, available_at, seq ROWS UNBOUNDED PRECEDING)) AS r
    WHERE n = 1 OR running <= $7),
claimed AS (
    UPDATE messages AS m
    SET state = 2, holder = $4, token = greatest(m.token + 1, $5), attempts = m.attempts + 1,
        lease_deadline = $6
    FROM fitting WHERE m.seq = fitting.seq
    RETURNING m.seq, m.body, m.headers, m.priority, m.grp, m.attempts, m.max_attempts, m.token,
              m.enqueued_at, m.available_at, m.bucket),
owned AS (
    UPDATE bucket_owners SET session = $4
    WHERE queue = $1 AND bucket IN (SELECT bucket FROM claimed WHERE grp IS NOT NULL)
      AND session IS DISTINCT FROM $4),
counted AS (
    INSERT INTO queue_counts (queue, delivered)
    SELECT $1, count(*) FROM claimed HAVING count(*) > 0),
delivered AS (
    INSERT INTO session_counts (session, delivered)
    SELECT $4, count(*) FROM claimed HAVING count(*) > 0),
seen AS (
    UPDATE sessions SET last_seen = $2
    WHERE id = $4 AND last_seen < $2 AND EXISTS (SELECT 1 FROM claimed))
SELECT * FROM claimed
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
FROM (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed
WHERE NOT EXISTS (SELECT 1 FROM claimed);

-- == settling leases =========================================================

-- name: ack_delete
-- A lease's token is honoured while the message is leased, or ready again
-- after its lease lapsed but before anyone else received it.
DELETE FROM messages AS m USING unnest($1::bigint[], $2::bigint[]) AS a(seq, token)
WHERE m.seq = a.seq AND m.token = a.token AND m.holder IS NOT NULL AND m.state IN (0, 2)
RETURNING m.seq, m.token, m.queue, m.grp, m.holder;

-- name: leases_lock
SELECT m.seq, m.token, m.queue, m.grp, m.attempts, m.max_attempts
FROM messages AS m JOIN unnest($1::bigint[], $2::bigint[]) AS a(seq, token)
  ON m.seq = a.seq AND m.token = a.token
WHERE m.holder IS NOT NULL AND m.state IN (0, 2)
FOR UPDATE OF m;

-- name: retry
UPDATE messages AS m
SET state = r.state, available_at = r.at, last_error = r.error, holder = NULL,
    lease_deadline = NULL
FROM unnest($1::bigint[], $2::smallint[], $3::float8[], $4::text[]) AS r(seq, state, at, error)
WHERE m.seq = r.seq;

-- name: unclaim
-- Deliveries that never reached their handler: ready at once, each one's
-- attempt taken back.
UPDATE messages AS m
SET state = 0, available_at = r.at, attempts = m.attempts - 1, holder = NULL,
    lease_deadline = NULL
FROM unnest($1::bigint[], $2::float8[]) AS r(seq, at)
WHERE m.seq = r.seq;

-- name: extend
-- Only a live lease: one past its deadline ($4, the time of the extension)
-- is lost, released or not yet.
UPDATE messages AS m SET lease_deadline = e.deadline
FROM unnest($1::bigint[], $2::bigint[], $3::float8[], $4::float8[]) AS e(seq, token, deadline, now)
WHERE m.seq = e.seq AND m.token = e.token AND m.state = 2 AND m.holder IS NOT NULL
  AND m.lease_deadline >= e.now
RETURNING m.seq, m.token;

-- name: kill
UPDATE messages AS m
SET state = 3, holder = NULL, lease_deadline = NULL, dead_reason = k.reason,
    last_error = coalesce(k.error, m.last_error), dead_at = k.now
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::float8[]) AS k(seq, reason, error, now)
WHERE m.seq = k.seq;

-- name: promote_groups
-- The head of each group finished: its next member (in seq order) leads.
-- A candidate that changed meanwhile (a concurrent TTL sweep killed it) is
-- reported as not promoted, and the caller looks again.
WITH nxt AS (
    SELECT DISTINCT ON (b.queue, b.grp) b.seq, b.queue, b.grp, g.now
    FROM messages AS b
    JOIN unnest($1::text[], $2::text[], $3::float8[]) AS g(queue, grp, now)
      ON b.queue = g.queue AND b.grp = g.grp
    WHERE b.state = 4
    ORDER BY b.queue, b.grp, b.seq),
upd AS (
    UPDATE messages AS m SET state = CASE WHEN m.available_at > nxt.now THEN 1 ELSE 0 END
    FROM nxt WHERE m.seq = nxt.seq AND m.state = 4
    RETURNING m.seq)
SELECT nxt.queue, nxt.grp, upd.seq IS NOT NULL FROM nxt LEFT JOIN upd ON upd.seq = nxt.seq;

-- name: results_put
INSERT INTO results AS r (seq, status, body, error, finished_at, expires_at)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::bytea[], $4::text[], $5::float8[],
                     $6::float8[])
ON CONFLICT (seq) DO UPDATE
SET status = excluded.status, body = excluded.body, error = excluded.error,
    finished_at = excluded.finished_at, expires_at = excluded.expires_at;

-- name: release
UPDATE messages SET state = 0, lease_deadline = NULL WHERE seq = ANY($1::bigint[]);

-- == sessions ================================================================

-- name: session_insert
INSERT INTO sessions (id, name, capacity, timeout, created_at, last_seen)
VALUES ($1, $2, $3, $4, $5, $5);

-- name: session_touch
-- A heartbeat is committed without waiting for the WAL flush: one lost in a
-- crash only makes its session look a moment older.
WITH touched AS (
    UPDATE sessions SET last_seen = greatest(last_seen, $2) WHERE id = $1 RETURNING id)
SELECT id, set_config('synchronous_commit', 'off', true) FROM touched;

-- name: sessions_delete
-- A claim in flight holds its session's row: this waits for it to commit.
DELETE FROM sessions WHERE id = ANY($1::text[]) RETURNING id;

-- name: sessions_expired
-- Any node may end a silent session; one that another node is ending (or
-- that is claiming right now) is skipped.
SELECT id FROM sessions WHERE last_seen + timeout < $1 ORDER BY created_at, id LIMIT $2
FOR UPDATE SKIP LOCKED;

-- name: leases_of_sessions
SELECT seq, queue, grp, attempts, max_attempts FROM messages
WHERE state = 2 AND holder = ANY($1::text[])
ORDER BY seq FOR UPDATE;

-- name: consumers_drop_sessions
DELETE FROM consumers WHERE session = ANY($1::text[]) RETURNING queue;

-- name: owners_drop_sessions
UPDATE bucket_owners SET session = NULL WHERE session = ANY($1::text[]);

-- name: session_counts_drop
DELETE FROM session_counts WHERE session = ANY($1::text[]);

-- name: sessions_all
SELECT s.id, s.name, s.capacity, s.timeout, s.created_at, s.last_seen,
       coalesce(c.delivered, 0)::bigint, coalesce(c.acked, 0)::bigint
FROM sessions AS s
LEFT JOIN (SELECT session, sum(delivered) AS delivered, sum(acked) AS acked
           FROM session_counts GROUP BY session) AS c ON c.session = s.id
ORDER BY s.created_at, s.id;

-- name: leases_by_holder
SELECT holder, count(*) FROM messages WHERE state = 2 GROUP BY holder;

-- name: consumer_insert
INSERT INTO consumers (session, queue, last_claim) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING;

-- name: consumers_all
SELECT session, queue FROM consumers;

-- name: consumers_of_queue
SELECT c.session, s.capacity FROM consumers AS c JOIN sessions AS s ON s.id = c.session
WHERE c.queue = $1 AND c.last_claim >= $2;

-- == the lease monitor =======================================================

-- name: leases_expired
SELECT seq, queue, grp, attempts, max_attempts FROM messages
WHERE state = 2 AND lease_deadline < $1
ORDER BY lease_deadline LIMIT $2
FOR UPDATE SKIP LOCKED;

-- name: promote_due_all
UPDATE messages SET state = 0
WHERE seq IN (SELECT d.seq FROM queues AS q
              CROSS JOIN LATERAL (SELECT seq FROM messages
                                  WHERE queue = q.name AND state = 1 AND available_at <= $1
                                  ORDER BY available_at LIMIT $2
                                  FOR UPDATE SKIP LOCKED) AS d)
RETURNING queue;

-- name: ttl_expired
SELECT seq, queue, grp, state FROM messages
WHERE expires_at IS NOT NULL AND expires_at <= $1 AND state IN (0, 1, 4)
ORDER BY expires_at LIMIT $2
FOR UPDATE SKIP LOCKED;

-- name: dedup_sweep
DELETE FROM dedup WHERE (queue, key) IN (
    SELECT queue, key FROM dedup WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED);

-- name: idempotency_sweep
DELETE FROM idempotency WHERE key IN (
    SELECT key FROM idempotency WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED);

-- name: results_sweep
DELETE FROM results WHERE seq IN (
    SELECT seq FROM results WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED);

-- name: counts_fold
-- Fold each queue's deltas into one row. Rows another node is folding are
-- skipped; a row is deleted (and counted) once, whoever gets it.
WITH gone AS (
    DELETE FROM queue_counts WHERE ctid IN (
        SELECT ctid FROM queue_counts
        WHERE queue IN (SELECT queue FROM queue_counts GROUP BY queue HAVING count(*) > $1)
        FOR UPDATE SKIP LOCKED)
    RETURNING *)
INSERT INTO queue_counts
SELECT queue, sum(depth), sum(enqueued), sum(delivered), sum(acked), sum(nacked), sum(dead),
       sum(expired), sum(lease_expired)
FROM gone GROUP BY queue;

-- name: session_counts_fold
WITH gone AS (
    DELETE FROM session_counts WHERE ctid IN (
        SELECT ctid FROM session_counts
        WHERE session IN (SELECT session FROM session_counts GROUP BY session
                          HAVING count(*) > $1)
        FOR UPDATE SKIP LOCKED)
    RETURNING *)
INSERT INTO session_counts SELECT session, sum(delivered), sum(acked) FROM gone GROUP BY session;

-- == dead letters ============================================================

-- name: dead_page
-- At most $3 dead letters after seq $2, and of those only as many as fit in
-- $5 bytes, each counted as its body, headers, last error, reason and $4 (the
-- first always goes).
WITH page AS (
    SELECT seq, octet_length(body) + coalesce(octet_length(headers), 0)
                + coalesce(octet_length(last_error), 0) + coalesce(octet_length(dead_reason), 0)
                + $4 AS size
    FROM messages WHERE queue = $1 AND state = 3 AND seq > $2 ORDER BY seq LIMIT $3),
fitting AS (
    SELECT seq FROM (
        SELECT seq, row_number() OVER w AS n, sum(size) OVER w AS running FROM page
        WINDOW w AS (ORDER BY seq ROWS UNBOUNDED PRECEDING)) AS r
    WHERE n = 1 OR running <= $5)
SELECT m.seq, m.body, m.headers, m.priority, m.grp, m.dedup_key, m.attempts, m.max_attempts,
       m.enqueued_at, m.available_at, m.expires_at, m.last_error, m.dead_reason, m.dead_at
FROM messages AS m JOIN fitting USING (seq) ORDER BY m.seq;

-- name: dead_lock
-- The dead letters to redrive (all of the queue's when $2 is NULL).
SELECT seq, grp FROM messages
WHERE queue = $1 AND state = 3 AND ($2::bigint[] IS NULL OR seq = ANY($2::bigint[]))
ORDER BY seq FOR UPDATE;

-- name: group_has_head
SELECT 1 FROM messages WHERE queue = $1 AND grp = $2 AND state IN (0, 1, 2) FOR SHARE;

-- name: redrive_one
UPDATE messages
SET state = $2, attempts = 0, available_at = $3, holder = NULL, dead_reason = NULL,
    dead_at = NULL
WHERE seq = $1;

-- name: results_delete
DELETE FROM results WHERE seq = ANY($1::bigint[]);

-- == topics, results, statistics ==============================================

-- name: binding_insert
INSERT INTO bindings (pattern, queue) VALUES ($1, $2) ON CONFLICT DO NOTHING;

-- name: binding_delete
DELETE FROM bindings WHERE pattern = $1 AND queue = $2 RETURNING queue;

-- name: bindings_all
SELECT pattern, queue FROM bindings ORDER BY pattern, queue;

-- name: result_get
SELECT status, body, error, finished_at FROM results WHERE seq = $1;

-- name: stats
-- The columns of store/mapping.py's queue_stats: the messages in each state
-- (in state order), the totals, the consumers, the oldest ready message.
SELECT (SELECT count(*) FROM messages WHERE queue = $1 AND state = 0),
       (SELECT count(*) FROM messages WHERE queue = $1 AND state = 1),
       (SELECT count(*) FROM messages WHERE state = 2 AND queue = $1),
       (SELECT count(*) FROM messages WHERE queue = $1 AND state = 3),
       (SELECT count(*) FROM messages WHERE queue = $1 AND grp IS NOT NULL AND state = 4),
       t.enqueued, t.delivered, t.acked, t.nacked, t.dead, t.expired, t.lease_expired,
       (SELECT count(*) FROM consumers WHERE queue = $1),
       (SELECT min(available_at) FROM messages WHERE queue = $1 AND state = 0)
FROM (SELECT coalesce(sum(enqueued), 0)::bigint AS enqueued,
             coalesce(sum(delivered), 0)::bigint AS delivered,
             coalesce(sum(acked), 0)::bigint AS acked,
             coalesce(sum(nacked), 0)::bigint AS nacked,
             coalesce(sum(dead), 0)::bigint AS dead,
             coalesce(sum(expired), 0)::bigint AS expired,
             coalesce(sum(lease_expired), 0)::bigint AS lease_expired
      FROM queue_counts WHERE queue = $1) AS t;

-- == life cycle ===============================================================

-- name: epoch_next
INSERT INTO meta (key, value) VALUES ('epoch', 0)
ON CONFLICT (key) DO UPDATE SET value = meta.value + 1
RETURNING value;

-- name: queues_many
SELECT name, config, created_at FROM queues WHERE name = ANY($1::text[]);

-- == maintenance ================================================================

-- name: maintenance_lock
-- One node at a time vacuums a schema (a session-level lock, released below).
SELECT pg_try_advisory_lock($1, hashtext($2));

-- name: maintenance_unlock
SELECT pg_advisory_unlock($1, hashtext($2));

-- name: vacuum
-- The tables that churn: dead row versions of deleted and updated rows are
-- reclaimed every few seconds instead of whenever autovacuum gets there.
VACUUM (SKIP_LOCKED) messages, queue_counts, session_counts, sessions, consumers,
    bucket_owners, dedup, idempotency, results;

-- name: vacuum_analyze
VACUUM (SKIP_LOCKED, ANALYZE) messages, queue_counts, session_counts, sessions, consumers,
    bucket_owners, dedup, idempotency, results;
