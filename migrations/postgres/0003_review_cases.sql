-- Anti-cheat cases: one per failed check, with its evidence, until an admin (or a policy)
-- slashes or dismisses it. A case is decided once: decisions are `UPDATE … WHERE status =
-- 'open'`. Ids are UUIDv7, so they sort by creation time (the listing cursor).
CREATE TABLE review_cases (
    id               UUID PRIMARY KEY,
    job_id           UUID,                      -- the job checked, when the check was about one
    wallet           TEXT NOT NULL,             -- lowercase 0x address
    miner_id         TEXT,                      -- the GPU: wallet-rig-gpuN, as jobs store it
    kind             TEXT NOT NULL,             -- waifu | llama: the points a slash takes
    check_name       TEXT NOT NULL,             -- image_similarity | llm_teacher_forcing | …
    evidence         TEXT NOT NULL,             -- JSON object: scores, thresholds, timings, keys
    status           TEXT NOT NULL,             -- open | slashed | dismissed
    created_ms       BIGINT NOT NULL,
    decided_ms       BIGINT,
    decided_by       TEXT,                      -- the admin's name, or `policy`
    note             TEXT,
    slash_points     BIGINT,                    -- requested micro-points, when given as points
    slash_fraction   DOUBLE PRECISION,          -- requested share of the balance, when so
    slashed_micro    BIGINT,                    -- micro-points taken
    ledger_entry_id  BIGINT                     -- the debit written
);
CREATE INDEX review_cases_status ON review_cases (status, id);
CREATE INDEX review_cases_wallet ON review_cases (wallet, id);
