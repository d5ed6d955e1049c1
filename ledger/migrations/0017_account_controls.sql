-- Account controls (issue 26): a status, a credit line (`min_balance`, NULL = unbounded below)
-- and a cap (`max_balance`, NULL = none) on every account. They are write-side state like the
-- refund totals and the holds: read under the head lock, decided in order by the batch decision
-- and changed only by journal entries of kind `account`, from which the audit replays them.
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS status TEXT NOT NULL DEFAULT 'active';
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS min_balance INT8;
ALTER TABLE accounts ADD COLUMN IF NOT EXISTS max_balance INT8;
ALTER TABLE accounts ADD CONSTRAINT account_status CHECK (status IN ('active', 'frozen', 'closed'));
ALTER TABLE accounts ADD CONSTRAINT account_limits
    CHECK ((min_balance IS NULL OR min_balance <= 0) AND (max_balance IS NULL OR max_balance >= 0));

-- An account entry names its account and the controls it sets, and moves no money (amount 0, no
-- postings): the amount CHECK of 0001 (named by PostgreSQL or by CockroachDB) allows it for them only.
ALTER TABLE journal ADD COLUMN IF NOT EXISTS account_id UUID;
ALTER TABLE journal ADD COLUMN IF NOT EXISTS account_status TEXT;
ALTER TABLE journal ADD COLUMN IF NOT EXISTS min_balance INT8;
ALTER TABLE journal ADD COLUMN IF NOT EXISTS max_balance INT8;
ALTER TABLE journal DROP CONSTRAINT IF EXISTS journal_amount_check;
ALTER TABLE journal DROP CONSTRAINT IF EXISTS check_amount;
ALTER TABLE journal ADD CONSTRAINT journal_amount CHECK (amount >= 1 OR (kind = 'account' AND amount = 0));

-- The database's own overdraft rule, kept as defence in depth with credit lines: a balance never
-- goes below its `balance_floor`, the lowest `min_balance` the account ever had (NULL: unbounded, as for
-- system accounts). It only ever goes down, so raising a credit line back (which may leave
-- a balance below the new `min_balance`, as the contract allows) never breaks the CHECK.
ALTER TABLE balances ADD COLUMN IF NOT EXISTS balance_floor INT8;
ALTER TABLE balances DROP CONSTRAINT IF EXISTS no_overdraft;
ALTER TABLE balances ADD CONSTRAINT no_overdraft_below_floor CHECK (balance_floor IS NULL OR balance >= balance_floor);

-- Wallets and vendor accounts had no credit (0); system accounts were unbounded (NULL). On
-- CockroachDB these two writes must go into a migration of their own (no writes in a schema
-- change's transaction).
UPDATE accounts SET min_balance = 0 WHERE kind <> 'system';
UPDATE balances SET balance_floor = 0 WHERE kind <> 'system';

-- Closing an account needs no pending hold from or to it: holds_by_payer finds the first, this the second.
CREATE INDEX IF NOT EXISTS holds_by_payee ON holds (to_account_id, status);

-- The account entries of an account (`ledger audit --from` starts from the controls the last one
-- at or before its position set) are found by 0018's journal_account_entries.
