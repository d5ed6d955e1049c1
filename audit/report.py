"""The audit's closed set of checks, its findings (bounded) and its report."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import msgspec


# The closed set of checks, in the order a tie at one position is reported.
CHECKS: tuple[str, ...] = (
    "contiguous",  # positions run 1, 2, 3 ... with no gap and no duplicate
    "chain",  # each prev_hash is the previous entry's hash (64 zeros before position 1)
    "hash",  # the hash recomputed from the entry's canonical bytes is the stored one
    "postings",  # postings sum to zero and are exactly (from, -amount), (to, +amount); a hold's step, those of its kind
    "accounts",  # every posting's account exists and holds the entry's currency
    "non_negative",  # no wallet or vendor account below zero after any entry
    "balance_after",  # every posting's stored balance_after is the replayed balance after its entry
    "refunds",  # a refund returns an earlier payment (transfer or capture) to a vendor, never more than it in total
    "controls",  # each account entry sets controls its account may have; every entry keeps the controls in force at its position; the accounts table agrees
    "holds",  # each hold placed once, closed at most once, captured <= held, closed before its expiry unless by expiry; holding accounts hold exactly the pending holds; the holds table agrees
    "checkpoint",  # the signature holds and the journal still hashes to the signed hash
    "orphan_postings",  # no postings without their journal entry
    "head",  # the journal_head row names the last entry
    "write_model",  # recomputed balances equal the `balances` table
    "projection",  # recomputed balances at the projector's checkpoint equal `projected_balances`
    "verifications",  # one verification per vendor payment up to the projector's checkpoint, equal to its entry
    "conservation",  # per currency, all balances sum to zero
    "tree",  # the stored Merkle subtrees are those recomputed from the replayed entry hashes
    "tree_heads",  # every signed tree head: its root and hash recomputed, its signature by the pinned key
)

PROGRESS_EVERY_ENTRIES = 10_000
EXAMPLES_IN_DETAIL_MAX = 3  # accounts named in a balance mismatch's detail, at most
PROGRESS_BAR_CHARS = 40

Balances = dict[uuid.UUID, int]
Progress = Callable[[int, int], None]  # (position reached, head position)


class Failure(msgspec.Struct, frozen=True):
    position: int
    check: str
    detail: str


class CheckResult(msgspec.Struct, frozen=True):
    name: str
    ok: bool
    failures: int
    first: Failure | None


class AuditReport(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    from_position: int
    last_position: int  # the last entry replayed
    head_position: int  # what the journal_head row says
    entries: int  # entries replayed in this run
    accounts: int
    projector_position: int
    checkpoint_position: int | None
    seconds: float
    entries_per_s: float
    checks: list[CheckResult]
    first_failure: Failure | None
    tree_size: int = 0  # leaves of the stored Merkle tree checked (0 when the replay starts --from)
    tree_heads: int = 0  # signed tree heads checked
    tree_head_signatures: str = "none"  # "verified" against the pinned key, or "unverified" without one


class Findings:
    """A count and the first failure of each check: bounded, however broken the journal is."""

    def __init__(self) -> None:
        self._counts = dict.fromkeys(CHECKS, 0)
        self._first: dict[str, Failure] = {}

    def record(self, check: str, position: int, detail: str) -> None:
        assert check in self._counts, f"unknown check {check}"
        self._counts[check] += 1
        self._first.setdefault(check, Failure(position, check, detail))

    def results(self) -> list[CheckResult]:
        return [
            CheckResult(name, self._counts[name] == 0, self._counts[name], self._first.get(name)) for name in CHECKS
        ]

    def first_failure(self) -> Failure | None:
        if not self._first:
            return None
        return min(self._first.values(), key=lambda f: (f.position, CHECKS.index(f.check)))


