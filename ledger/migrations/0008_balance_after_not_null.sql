-- Every posting has its balance_after now (0007 filled the older ones).
ALTER TABLE postings ALTER COLUMN balance_after SET NOT NULL;
