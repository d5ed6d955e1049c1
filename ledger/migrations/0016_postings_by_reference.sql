-- A statement with `reference=`: one range scan, a reference that matches nothing reads nothing.
CREATE INDEX IF NOT EXISTS postings_by_reference ON postings (account_id, reference, position);
