-- The journal as a Merkle tree (RFC 9162), derived data kept by the tree follower
-- (`ledger.tree`): the hash of every complete power-of-two subtree, keyed (level, node_index),
-- covering leaves [node_index * 2^level, (node_index + 1) * 2^level). `complete_at` is the tree
-- size at which the subtree became complete, (node_index + 1) * 2^level: the audit reads the
-- nodes in that order alongside the journal. Rebuilt from the journal by `ledger projector rebuild`.

CREATE TABLE IF NOT EXISTS merkle_nodes (
    level        INT8 NOT NULL CHECK (level >= 0 AND level < 63),
    node_index   INT8 NOT NULL CHECK (node_index >= 0),
    complete_at  INT8 NOT NULL,
    hash         BYTEA NOT NULL,
    PRIMARY KEY (level, node_index)
);

CREATE INDEX IF NOT EXISTS merkle_nodes_by_completion ON merkle_nodes (complete_at, level);

-- One row: how many leaves (journal positions 1..tree_size) the stored tree holds. The follower
-- locks it for each page it appends, so two followers take turns.
CREATE TABLE IF NOT EXISTS merkle_state (
    id          INT8 PRIMARY KEY CHECK (id = 1),
    tree_size   INT8 NOT NULL CHECK (tree_size >= 0),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

INSERT INTO merkle_state (id, tree_size) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;

-- Signed tree heads (`ledger checkpoint`, and the follower every LEDGER_CHECKPOINT_INTERVAL_S):
-- the signature covers `ledger.checkpoint.tree_head_bytes`.
CREATE TABLE IF NOT EXISTS signed_tree_heads (
    tree_size   INT8 PRIMARY KEY CHECK (tree_size >= 1),
    root_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    signature   TEXT NOT NULL,
    signed_at   TIMESTAMPTZ NOT NULL
);
