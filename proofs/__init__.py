"""The journal as an RFC 9162 Merkle tree: its follower, its proofs and its signed heads."""
