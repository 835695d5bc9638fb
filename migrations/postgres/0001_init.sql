-- Jobs are the queue: a row is written before a job is handed to the dispatcher, and every
-- state change is a conditional UPDATE (WHERE status = expected) so a lost race shows.
CREATE TABLE jobs (
    id               UUID PRIMARY KEY,          -- v7
    model            TEXT NOT NULL,
    kind             TEXT NOT NULL,             -- llm | image | synthetic
    params           TEXT NOT NULL,             -- JSON (protocol JobParams)
    status           TEXT NOT NULL,             -- queued | assigned | completed | failed | cancelled
    attempts         INTEGER NOT NULL DEFAULT 0,
    api_key_id       UUID,
    agent_session    UUID,                      -- session currently (or last) holding the lease
    miner_id         TEXT,
    wallet           TEXT,
    lease_expires_ms BIGINT,
    output           TEXT,                      -- JSON (protocol JobOutput)
    metrics          TEXT,                      -- JSON: agent-reported timings
    error            TEXT,
    created_ms       BIGINT NOT NULL,
    assigned_ms      BIGINT,
    finished_ms      BIGINT,
    updated_ms       BIGINT NOT NULL
);
CREATE INDEX jobs_status_created ON jobs (status, created_ms);

CREATE TABLE api_keys (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL,
    key_sha256  TEXT NOT NULL UNIQUE,           -- hex; the key itself is never stored
    created_ms  BIGINT NOT NULL,
    revoked_ms  BIGINT
);

CREATE TABLE miner_tokens (
    id          UUID PRIMARY KEY,               -- the JWT's jti
    wallet      TEXT NOT NULL,
    name        TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    revoked_ms  BIGINT
);
CREATE INDEX miner_tokens_wallet ON miner_tokens (wallet);

-- One row per GPU slot ever seen: what the portal lists as a wallet's miners.
CREATE TABLE miners (
    miner_id      TEXT PRIMARY KEY,             -- wallet-name-gpuN
    wallet        TEXT NOT NULL,
    name          TEXT NOT NULL,
    gpu_index     INTEGER NOT NULL,
    gpu_uuid      TEXT NOT NULL,
    gpu_name      TEXT NOT NULL,
    vram_mb       BIGINT NOT NULL,
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms  BIGINT NOT NULL
);
CREATE INDEX miners_wallet ON miners (wallet);
