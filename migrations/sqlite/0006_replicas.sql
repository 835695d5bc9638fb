-- Several coordinators (replicas) may share a PostgreSQL database; SQLite has one. The tables
-- are the same on both, so the code is too: each replica registers itself and beats a
-- heartbeat, and a lease records the replica whose agent holds it.
CREATE TABLE replicas (
    id          BLOB PRIMARY KEY,               -- UUID v7, new at every start
    host        TEXT NOT NULL,                  -- where it listens, for operators
    started_ms  INTEGER NOT NULL,
    seen_ms     INTEGER NOT NULL                -- last heartbeat
);

ALTER TABLE jobs ADD COLUMN replica BLOB;       -- the replica holding the lease
-- The consumer asked for a token stream (forwarded between replicas on PostgreSQL).
ALTER TABLE jobs ADD COLUMN streamed INTEGER NOT NULL DEFAULT 0;
CREATE INDEX jobs_assigned_replica ON jobs (replica) WHERE status = 'assigned';
