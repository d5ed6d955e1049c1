-- A statement filtered by reference is one range scan on (account_id, reference, position) once
-- 0016 indexes it: each posting carries its entry's reference, written by the committer in the
-- entry's own transaction. Without it the filter walked every posting of the account (issue 24
-- #8). Schema changes and writes stay in separate transactions, as CockroachDB requires: 0015
-- fills the postings written before this, 0016 builds the index.
ALTER TABLE postings ADD COLUMN IF NOT EXISTS reference TEXT;
