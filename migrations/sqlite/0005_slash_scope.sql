-- Slashes take from what a wallet, or one of its GPUs, earned in the current season. The
-- case records which scope and season its slash was measured against.
ALTER TABLE review_cases ADD COLUMN slash_scope TEXT;   -- wallet | miner
ALTER TABLE review_cases ADD COLUMN slash_season TEXT;  -- the season's name
