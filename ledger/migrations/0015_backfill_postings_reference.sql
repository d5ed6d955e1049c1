-- The reference of the postings written before 0014: their entry's.
UPDATE postings SET reference = journal.reference
FROM journal
WHERE journal.position = postings.position AND postings.reference IS NULL;
