-- The points ledger: append-only. Balances are sums over it; nothing is ever updated.
-- Accruals carry their job (UNIQUE: one credit per job, whatever races); slashes are
-- negative entries with a reason.
CREATE TABLE ledger (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- cursor order
    wallet      TEXT NOT NULL,                      -- lowercase 0x address
    kind        TEXT NOT NULL,                      -- waifu | llama
    entry       TEXT NOT NULL,                      -- accrual | slash
    amount      INTEGER NOT NULL,                   -- micro-points; negative for slashes
    job_id      BLOB UNIQUE,                        -- accruals only
    miner_id    TEXT,
    model       TEXT,
    detail      TEXT NOT NULL,                      -- JSON: how the amount was reached
    reason      TEXT,                               -- slashes
    case_id     BLOB,                               -- slashes from an anti-cheat case
    created_ms  INTEGER NOT NULL
);
CREATE INDEX ledger_wallet ON ledger (wallet, id);
CREATE INDEX ledger_kind_created ON ledger (kind, created_ms);
-- One debit per case, wallet and kind: repeating an admin's slash changes nothing.
CREATE UNIQUE INDEX ledger_case ON ledger (case_id, wallet, kind);

-- Token holdings that boost points (NFT now, stHEU later), from snapshot imports.
CREATE TABLE holdings (
    wallet      TEXT NOT NULL,
    token       TEXT NOT NULL,                      -- nft | stheu
    count       INTEGER NOT NULL,
    source      TEXT NOT NULL,                      -- e.g. the imported file's name
    updated_ms  INTEGER NOT NULL,
    PRIMARY KEY (wallet, token)
);

-- Objects stored for each job (input, output, meta), as written to S3.
CREATE TABLE job_objects (
    job_id      BLOB NOT NULL,
    name        TEXT NOT NULL,                      -- input.json | output.json | output.png | meta.json
    key         TEXT NOT NULL,
    size_bytes  INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    PRIMARY KEY (job_id, name)
);

-- Sign-in nonces: each is good once, for a few minutes.
CREATE TABLE wallet_nonces (
    nonce       TEXT PRIMARY KEY,
    wallet      TEXT NOT NULL,
    message     TEXT NOT NULL,
    expires_ms  INTEGER NOT NULL,
    used_ms     INTEGER
);

-- Miner tokens minted through the portal name the miner they are for.
ALTER TABLE miner_tokens ADD COLUMN miner_name TEXT;

-- Per-miner figures for the portal (jobs and mean latency over 24 h).
CREATE INDEX jobs_miner_finished ON jobs (miner_id, finished_ms);

ALTER TABLE miners ADD COLUMN models TEXT;      -- JSON array: models the GPU serves
ALTER TABLE miners ADD COLUMN suspended_ms INTEGER;
ALTER TABLE miners ADD COLUMN suspended_reason TEXT;
