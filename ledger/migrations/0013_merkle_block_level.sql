-- The Merkle tree stores only the subtrees of 16 leaves and more (`ledger.merkle.BLOCK_LEVEL` = 4):
-- the smaller ones lie inside one aligned block of 16 journal entries and are hashed from those
-- entries' hashes when a proof needs them. Two rows per entry become one per eight, which is most
-- of what the tree cost the write path. The rows below level 4 are derived data nobody reads now.

DELETE FROM merkle_nodes WHERE level < 4;

ALTER TABLE merkle_nodes ADD CONSTRAINT merkle_nodes_block_level CHECK (level >= 4);
