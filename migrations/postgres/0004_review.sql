-- Anti-cheat review: which GPUs are trusted validators, how far each GPU has earned trust,
-- and one review decision per completed job.

-- Why a job exists: a consumer asked (`consumer`), the reviewer mixed a probe into traffic
-- (`probe`), or the reviewer re-executes a job on a validator (`validation`, with the job
-- it re-executes in `review_of`). Only validator slots run validation jobs.
ALTER TABLE jobs ADD COLUMN purpose TEXT NOT NULL DEFAULT 'consumer';
ALTER TABLE jobs ADD COLUMN review_of UUID;
CREATE INDEX jobs_finished ON jobs (finished_ms);

-- Set by an admin: this GPU re-executes other miners' jobs for review (and is not reviewed).
ALTER TABLE miners ADD COLUMN validator_since_ms BIGINT;

-- Adaptive sampling state per GPU: every job is audited until `consecutive_valid` reaches
-- the warm-up count, then about 1 in `consecutive_valid`, never below the floor. A failed
-- check resets it to 0.
CREATE TABLE miner_trust (
    miner_id          TEXT PRIMARY KEY,
    consecutive_valid BIGINT NOT NULL,
    jobs_seen         BIGINT NOT NULL,
    audits            BIGINT NOT NULL,
    failures          BIGINT NOT NULL,
    updated_ms        BIGINT NOT NULL
);

-- One row per completed consumer or probe job the reviewer has looked at.
CREATE TABLE reviews (
    job_id          UUID PRIMARY KEY,
    miner_id        TEXT NOT NULL,
    wallet          TEXT NOT NULL,
    model           TEXT NOT NULL,
    status          TEXT NOT NULL,              -- skipped | pending | passed | failed | unverified
    reason          TEXT NOT NULL,              -- why it was (not) audited: warm_up | sampled | probe | not_sampled | …
    validation_job  UUID,                       -- the re-execution on a validator
    verdict         TEXT,                       -- JSON: scores and thresholds
    created_ms      BIGINT NOT NULL,
    decided_ms      BIGINT
);
CREATE INDEX reviews_status ON reviews (status, created_ms);
CREATE INDEX reviews_miner ON reviews (miner_id, created_ms);
