-- Several coordinators (replicas) may share this database. Each registers itself and beats a
-- heartbeat; a lease records the replica whose agent holds it, so when a replica stops
-- beating, the others put its leases back in the queue.
CREATE TABLE replicas (
    id          UUID PRIMARY KEY,               -- v7, new at every start
    host        TEXT NOT NULL,                  -- where it listens, for operators
    started_ms  BIGINT NOT NULL,
    seen_ms     BIGINT NOT NULL                 -- last heartbeat
);

ALTER TABLE jobs ADD COLUMN replica UUID;       -- the replica holding the lease
-- The consumer asked for a token stream: the replica running the job forwards its tokens to
-- the replica the consumer is connected to.
ALTER TABLE jobs ADD COLUMN streamed BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX jobs_assigned_replica ON jobs (replica) WHERE status = 'assigned';
