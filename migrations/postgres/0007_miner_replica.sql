-- The replica a GPU's agent is connected to (NULL while disconnected), so every replica can
-- tell whether a miner is online.
ALTER TABLE miners ADD COLUMN replica UUID;
