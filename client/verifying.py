"""The proof routes of the client and `verify`: a transfer checked without trusting the service.

docs/proofs.md, contract v3 "Entries a verifier can recompute".

`verify` recomputes the transfer's `hash` from the fields shown, compares what a vendor was shown
elsewhere with them, checks the latest signed tree head against the pinned key and against the
last head this client trusted (RFC 9162 consistency), and then the transfer's inclusion under it.
Any failure raises `ProofError`; the trusted head moves only to a head that passed.
"""

from __future__ import annotations

import asyncio

import schemas
from client import proof
from client.proof import NotSignedYet, ProofError


class Trust:
    """The last signed tree head trusted, shared by every principal's view of one client. The lock
    makes "check the new head against the trusted one, then trust it" one step, so two heads each
    consistent with the old one but not with each other cannot both be trusted."""

    def __init__(self, head: schemas.SignedTreeHead | None) -> None:
        self.head = head
        self.lock = asyncio.Lock()


class ProofRoutes:
    """Mixed into `LedgerClient`, which provides `_call`, `get_transfer`, `_public_key`, `_trust`."""

    async def tree(self, *, tree_size: int | None = None) -> schemas.TreeHead:
        params = {"tree_size": tree_size} if tree_size is not None else None
        return await self._call("GET", "/v1/journal/tree", schemas.TreeHead, params=params)

    async def inclusion_proof(self, position: int, *, tree_size: int | None = None) -> schemas.InclusionProof:
        params = {"position": position, **({"tree_size": tree_size} if tree_size is not None else {})}
        return await self._call("GET", "/v1/journal/proofs/inclusion", schemas.InclusionProof, params=params)

    async def consistency_proof(self, from_size: int, *, to_size: int | None = None) -> schemas.ConsistencyProof:
        params = {"from_size": from_size, **({"to_size": to_size} if to_size is not None else {})}
        return await self._call("GET", "/v1/journal/proofs/consistency", schemas.ConsistencyProof, params=params)

    async def latest_checkpoint(self) -> schemas.SignedTreeHead:
        """The latest signed tree head as the service answers it, unchecked (see `trusted_checkpoint`)."""
        return await self._call("GET", "/v1/journal/checkpoints/latest", schemas.SignedTreeHead)

    @property
    def trusted_head(self) -> schemas.SignedTreeHead | None:
        """The last head that passed the checks; keep it and pass it back as `trusted_head=`."""
        return self._trust.head

    async def trusted_checkpoint(self) -> schemas.SignedTreeHead:
        """The latest signed tree head, once its signature is the pinned key's and it is consistent
        with the trusted head (either way round: an older head must be a prefix of the trusted one);
        the trusted head then moves to it if it is larger. Otherwise ProofError."""
        if self._public_key is None:
            raise ValueError("checking tree heads needs the service's pinned key: LedgerClient(public_key=...)")
        head = await self.latest_checkpoint()
        proof.check_signature(head, self._public_key)
        async with self._trust.lock:
            trusted = self._trust.head
            if trusted is not None:
                await self._check_one_history(trusted, head)
            if trusted is None or head.tree_size > trusted.tree_size:
                self._trust.head = head
        return head

    async def _check_one_history(self, trusted: schemas.SignedTreeHead, head: schemas.SignedTreeHead) -> None:
        old, new = sorted((trusted, head), key=lambda h: h.tree_size)
        if old.tree_size == new.tree_size:
            consistent = old.root_hash == new.root_hash
        else:
            answer = await self.consistency_proof(old.tree_size, to_size=new.tree_size)
            path = [bytes.fromhex(h) for h in answer.proof]
            consistent = proof.verify_consistency(old.tree_size, new.tree_size, bytes.fromhex(old.root_hash),
                                                  bytes.fromhex(new.root_hash), path)
        if not consistent:
            raise ProofError(f"the signed tree head of size {head.tree_size} does not extend the trusted head "
                             f"of size {trusted.tree_size}: the history was rewritten")

    async def verify(self, shown: schemas.Transfer | schemas.Verification) -> schemas.SignedTreeHead:
        """Prove `shown` (a transfer answer, or a verification or webhook `data` a vendor was shown,
        whose transfer is then fetched) is in the history signed by the pinned key; the head it is
        proven under, or ProofError. A transfer newer than the latest signed head is not covered
        yet (NotSignedYet, a ProofError): ask again after the next signature."""
        transfer = shown if isinstance(shown, schemas.Transfer) else await self.get_transfer(shown.transfer_id)
        proof.check_entry(transfer)
        if isinstance(shown, schemas.Verification):
            proof.check_shown(shown, transfer)
        head = await self.trusted_checkpoint()
        if transfer.position > head.tree_size:
            raise NotSignedYet(f"position {transfer.position} is newer than the latest signed tree head "
                             f"({head.tree_size} entries); retry after the next signature")
        answer = await self.inclusion_proof(transfer.position, tree_size=head.tree_size)
        path = [bytes.fromhex(h) for h in answer.audit_path]
        if not proof.verify_inclusion(transfer.position - 1, head.tree_size, proof.leaf_hash(transfer.hash), path,
                                      bytes.fromhex(head.root_hash)):
            raise ProofError(f"the hash of position {transfer.position} is not in the signed tree of "
                             f"{head.tree_size} entries")
        return head

    @staticmethod
    def verify_inclusion(entry_hash: str, inclusion: schemas.InclusionProof, root_hash: str) -> bool:
        """Pure (no I/O): the entry with this `hash` is leaf `inclusion.position - 1` of the tree
        whose root is `root_hash` (hex, from a head whose signature you checked). It binds the hash
        only: recompute it from the entry's fields first, or use `verify`, which does."""
        leaf = proof.leaf_hash(entry_hash)
        if inclusion.leaf_hash != leaf.hex():
            return False
        path = [bytes.fromhex(h) for h in inclusion.audit_path]
        return proof.verify_inclusion(inclusion.position - 1, inclusion.tree_size, leaf, path, bytes.fromhex(root_hash))
