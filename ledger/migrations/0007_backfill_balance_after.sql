-- balance_after of the postings written before 0004: each account's running sum in position
-- order (a window function, which CockroachDB has too). Postings the committer wrote since have it.
UPDATE postings SET balance_after = r.balance_after
FROM (SELECT position, account_id,
             sum(amount) OVER (PARTITION BY account_id ORDER BY position) AS balance_after
      FROM postings) AS r
WHERE postings.position = r.position AND postings.account_id = r.account_id AND postings.balance_after IS NULL;
