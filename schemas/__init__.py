"""The wire shapes of the ledger, as msgspec Structs.

One definition serves the API (decoding requests, encoding answers), the NATS events, the
projector, the Python client and the OpenAPI document. Constraints live in the types, so a
decoder built once rejects bad input with a path (`at $.amount`) before any I/O happens.
New fields always get defaults, so older readers keep decoding newer events.
"""

from __future__ import annotations

import datetime as dt
import typing
import uuid
from typing import Annotated, ClassVar, Literal

import msgspec
from msgspec import Meta, Struct

AMOUNT_MAX = 2**53 - 1
REFERENCE_CHARS_MAX = 128
METADATA_KEYS_MAX = 16
METADATA_KEY_CHARS_MAX = 64
METADATA_VALUE_CHARS_MAX = 256
NAME_CHARS_MAX = 200
PAGE_LIMIT_MAX = 1000
JOURNAL_LIMIT_MAX = 10000
POSITION_MAX = 2**63 - 1  # the journal's INT8 position column
SEARCH_METADATA_FILTERS_MAX = 4  # `metadata.KEY=VALUE` filters one search may combine

# PostgreSQL TEXT cannot hold NUL, so it is refused at the edge instead of failing in the database.
_NO_NUL = "^[^\x00]*$"

Amount = Annotated[int, Meta(ge=1, le=AMOUNT_MAX, description="Integer count of minor units.")]
SignedAmount = Annotated[int, Meta(ge=-AMOUNT_MAX, le=AMOUNT_MAX)]
# The length bounds keep out "USD\n": Python's `$` (msgspec's) also matches before a final newline,
# where JSON Schema's does not.
Currency = Annotated[str, Meta(pattern="^[A-Z]{3}$", min_length=3, max_length=3,
                               description="ISO-4217-like code, three upper-case letters.")]
Reference = Annotated[str, Meta(max_length=REFERENCE_CHARS_MAX, pattern=_NO_NUL)]
MetadataKey = Annotated[str, Meta(min_length=1, max_length=METADATA_KEY_CHARS_MAX, pattern=_NO_NUL)]
MetadataValue = Annotated[str, Meta(max_length=METADATA_VALUE_CHARS_MAX, pattern=_NO_NUL)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Meta(max_length=METADATA_KEYS_MAX)]
Name = Annotated[str, Meta(min_length=1, max_length=NAME_CHARS_MAX, pattern=_NO_NUL)]
Hash = Annotated[str, Meta(pattern="^[0-9a-f]{64}$", description="Hex SHA-256.")]
Timestamp = Annotated[str, Meta(description="RFC 3339 UTC with exactly six fractional digits, e.g. 2026-11-25T14:22:47.123456Z; kept as text so the hashed form is byte-exact.")]
Role = Literal["admin", "client", "vendor", "auditor"]
AccountKind = Literal["wallet", "vendor", "system"]
EntryKind = Literal["transfer", "refund", "hold", "capture", "void", "expire"]
# What a search's `kind=` may name: every entry kind, and `account` (control changes, issue 26),
# which statements list only when asked for it.
SearchKind = Literal[tuple(dict.fromkeys((*typing.get_args(EntryKind), "account")))]


class Strict(Struct, forbid_unknown_fields=True, omit_defaults=False):
    """Request bodies reject fields they do not know (the contract says 400)."""


# ---- requests -------------------------------------------------------------------------------


class PrincipalCreate(Strict):
    role: Role
    name: Name


class AccountCreate(Strict):
    kind: AccountKind
    currency: Currency
    id: uuid.UUID | None = None
    owner_id: uuid.UUID | None = None
    name: Annotated[str, Meta(max_length=NAME_CHARS_MAX, pattern=_NO_NUL)] = ""

    # What __post_init__ checks, in JSON Schema, for the OpenAPI document to add to this type's.
    json_schema_extra: ClassVar[dict] = {
        "if": {"properties": {"kind": {"const": "system"}}, "required": ["kind"]},
        "then": {"properties": {"owner_id": {"type": "null"}}},
    }

    def __post_init__(self) -> None:
        # The decoder turns this ValueError into a ValidationError; a body is decoded at the top
        # level, so the message is kept as it is, path included.
        if self.kind == "system" and self.owner_id is not None:
            raise ValueError("system accounts have no owner - at `$.owner_id`")


class TransferCreate(Strict):
    from_account_id: uuid.UUID
    to_account_id: uuid.UUID
    amount: Amount
    currency: Currency
    reference: Reference = ""
    metadata: Metadata = {}


class RefundCreate(Strict):
    """A refund of (part of) a payment to a vendor account: the accounts and the currency are the
    original's, reversed."""

    amount: Amount
    reference: Reference = ""
    metadata: Metadata = {}


HOLD_EXPIRES_IN_S_MAX = 604_800  # a week
HOLD_EXPIRES_IN_S_DEFAULT = 86_400


class HoldCreate(Strict):
    """Reserve `amount` of the wallet for the vendor until captured, voided or expired."""

    from_account_id: uuid.UUID
    to_account_id: uuid.UUID
    amount: Amount
    currency: Currency
    reference: Reference = ""
    metadata: Metadata = {}
    expires_in_s: Annotated[int, Meta(ge=1, le=HOLD_EXPIRES_IN_S_MAX)] = HOLD_EXPIRES_IN_S_DEFAULT


class HoldCapture(Strict):
    """Capture (part of) a hold; the rest goes back to the wallet. No amount: the whole hold."""

    amount: Amount | None = None


# ---- answers --------------------------------------------------------------------------------


class Principal(Struct):
    id: uuid.UUID
    role: Role
    name: str
    token: str


class Caller(Struct):
    """The principal a token belongs to (`GET /v1/me`): what a console needs to know which pages to show."""

    id: uuid.UUID
    role: Role
    name: str


class Account(Struct):
    id: uuid.UUID
    kind: AccountKind
    currency: str
    owner_id: uuid.UUID | None
    name: str
    balance: int
    position: Annotated[int, Meta(ge=0, description="Journal head the balance is exact at.")]
    created_at: dt.datetime
    held: Annotated[int, Meta(ge=0, description="The sum of the account's pending holds as payer (already out of `balance`).")] = 0


class TokenCreated(Struct):
    """A new bearer token, shown only in this answer."""

    id: uuid.UUID
    token: str
    created_at: dt.datetime


class TokenInfo(Struct):
    id: uuid.UUID
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None


class TokenList(Struct):
    items: list[TokenInfo]


class Transfer(Struct):
    id: uuid.UUID
    from_account_id: uuid.UUID
    to_account_id: uuid.UUID
    amount: int
    currency: str
    reference: str
    metadata: dict[str, str]
    status: Literal["committed"]
    position: int
    committed_at: Timestamp
    hash: Hash
    kind: EntryKind = "transfer"
    refund_of: uuid.UUID | None = None
    hold_id: uuid.UUID | None = None  # the hold of a hold's step (kind hold, capture, void or expire)
    # v3 proof binding: with these, the answer holds every field the entry's hash covers (`id` is
    # its `transfer_id`), so a verifier recomputes `hash` from what it was shown (docs/proofs.md).
    # Always sent; the defaults only let a newer client decode an older server's answer, whose
    # verification then fails.
    prev_hash: Annotated[Hash | None, Meta(description="The previous entry's `hash`, covered by this one's.")] = None
    postings: Annotated[list[Posting], Meta(description="The entry's postings, covered by its `hash`.")] = []


HoldStatus = Literal["pending", "captured", "voided", "expired"]


class Hold(Struct):
    id: uuid.UUID
    from_account_id: uuid.UUID
    to_account_id: uuid.UUID
    amount: int
    currency: str
    reference: str
    metadata: dict[str, str]
    status: HoldStatus
    expires_at: Timestamp
    position: Annotated[int, Meta(ge=1, description="The position of the hold's `hold` entry.")]
    captured_amount: int = 0
    transfer_id: Annotated[uuid.UUID | None, Meta(
        description="Of the capture entry, once captured: a payment vendors verify and may refund."
    )] = None
    closed_position: Annotated[int | None, Meta(description="Of the entry that closed the hold, once closed.")] = None


class AccountPage(Struct):
    items: list[Account]
    next: str | None


class StatementItem(Struct):
    """One entry of an account's statement, as the account sees it."""

    position: int
    transfer_id: uuid.UUID
    kind: EntryKind
    amount: Annotated[int, Meta(description="Signed for this account: + in, - out.")]
    balance_after: Annotated[int, Meta(description="The account's committed balance right after this entry.")]
    counterparty_account_id: uuid.UUID
    reference: str
    committed_at: Timestamp


class StatementPage(Struct):
    items: list[StatementItem]
    next: str | None


class TransferPage(Struct):
    items: list[Transfer]
    next: str | None


class Posting(Struct):
    account_id: uuid.UUID
    amount: SignedAmount


class JournalEntry(Struct, frozen=True, omit_defaults=True):
    """One committed transfer, the one shape of a journal entry: sealed by the domain, stored and
    read back by the store, the line of `GET /v1/journal`, the NATS event body, what the projector
    applies and the audit replays. Encoded and decoded directly, never copied field by field.

    Its hash covers `ledger.domain.canonical_bytes`: every field but `hash`, and a field that has
    a default only when it differs from it. So a field added later with a default (as new event
    fields always are) leaves the bytes, and the hash, of every older entry unchanged. The encoded
    entry leaves them out the same way (`omit_defaults`), so an exported line minus `hash` is
    exactly the hashed form, and a v1 export re-encodes byte for byte.
    """

    position: Annotated[int, Meta(ge=1, le=POSITION_MAX)]
    transfer_id: uuid.UUID
    from_account_id: uuid.UUID
    to_account_id: uuid.UUID
    amount: int
    currency: str
    reference: str
    metadata: dict[str, str]
    postings: list[Posting]
    committed_at: Timestamp
    prev_hash: Hash
    hash: Hash
    # v2. Defaults keep a v1 entry's canonical bytes (and hash) unchanged.
    kind: EntryKind = "transfer"
    refund_of: uuid.UUID | None = None
    hold_id: uuid.UUID | None = None  # the hold of a hold's step


# What the answer to a transfer shares with its journal entry, under the same names.
_TRANSFER_FROM_ENTRY = tuple(name for name in Transfer.__struct_fields__ if name in JournalEntry.__struct_fields__)


def transfer_from_entry(entry: JournalEntry) -> Transfer:
    """The answer of `POST /v1/transfers` and `GET /v1/transfers/{id}`, derived from the entry:
    its shared fields as they are, the transfer id as `id`, and the status."""
    shared = {name: getattr(entry, name) for name in _TRANSFER_FROM_ENTRY}
    return Transfer(id=entry.transfer_id, status="committed", **shared)


class JournalHead(Struct):
    position: int
    hash: Hash
    committed_at: Timestamp | None


class Verification(Struct):
    transfer_id: uuid.UUID
    vendor_account_id: uuid.UUID
    payer_account_id: uuid.UUID
    amount: int
    currency: str
    reference: str
    committed_at: Timestamp
    position: int
    hash: Hash
    status: Literal["verified"]
    projected_at: dt.datetime
    refunded_amount: int = 0


class VerificationPage(Struct):
    items: list[Verification]
    next: str | None


class ValidationIssue(Struct):
    path: str
    message: str


class Problem(Struct, omit_defaults=True):
    """RFC 9457 problem details; `code` is the stable, documented snake_case name."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[ValidationIssue] | None = None


class Health(Struct):
    status: str
    checks: dict[str, str] = {}


def encode(value: object) -> bytes:
    return _encoder.encode(value)


_encoder = msgspec.json.Encoder()


# ---- proofs: the journal as a Merkle tree (RFC 9162) ---------------------------------------

Signature = Annotated[str, Meta(pattern="^[0-9a-f]{128}$", description="Hex Ed25519 signature.")]
PublicKey = Annotated[str, Meta(pattern="^[0-9a-f]{64}$", description="Hex raw Ed25519 public key.")]


class TreeHead(Struct):
    tree_size: int
    root_hash: Hash


class InclusionProof(Struct):
    """RFC 9162 §2.1.3: `audit_path` from the leaf up; `leaf_hash` = SHA-256(0x00 ‖ entry hash bytes)."""

    position: int
    tree_size: int
    leaf_hash: Hash
    audit_path: list[Hash]


class ConsistencyProof(Struct):
    """RFC 9162 §2.1.4: the tree of `from_size` leaves is a prefix of the tree of `to_size`."""

    from_size: int
    to_size: int
    proof: list[Hash]


class SignedTreeHead(Struct):
    """Ed25519 over `ledger-tree-head-v1\\n{tree_size}\\n{root_hash}\\n{hash}\\n{signed_at}\\n` (ASCII);
    `hash` is the journal entry's hash at position `tree_size`. Trust it only with a pinned key.
    The one shape of a signed tree head: the answer, the store's row and what `proofs.tree.sign_head`
    makes."""

    tree_size: int
    root_hash: Hash
    hash: Hash
    signed_at: Timestamp
    signature: Signature
    public_key: PublicKey


# ---- vendor webhooks ------------------------------------------------------------------------

WebhookEventType = Literal[
    "transfer.received", "refund.created", "hold.created", "hold.captured", "hold.voided", "hold.expired"
]
WEBHOOK_EVENT_TYPES: tuple[str, ...] = WebhookEventType.__args__
WEBHOOK_URL_CHARS_MAX = 2048
WebhookUrl = Annotated[str, Meta(min_length=1, max_length=WEBHOOK_URL_CHARS_MAX, pattern="^[^\x00-\x20\x7f]*$",
                                 description="An https:// (or http://) URL, without spaces or control characters.")]
DeliveryStatus = Literal["pending", "delivered", "failed"]


class WebhookCreate(Strict):
    url: WebhookUrl
    event_types: Annotated[list[WebhookEventType], Meta(min_length=1, max_length=len(WEBHOOK_EVENT_TYPES))] | None = None


class Webhook(Struct):
    id: uuid.UUID
    url: str
    event_types: list[WebhookEventType]
    created_at: dt.datetime


class WebhookCreated(Struct):
    """A new endpoint with its signing secret, shown only in this answer."""

    id: uuid.UUID
    url: str
    event_types: list[WebhookEventType]
    secret: Annotated[str, Meta(description="`whsec_` + base64 of the key bytes (Standard Webhooks).")]
    created_at: dt.datetime


class WebhookPage(Struct):
    items: list[Webhook]
    next: str | None


class WebhookDelivery(Struct):
    event_id: uuid.UUID
    type: WebhookEventType
    position: int
    attempts: int
    status: DeliveryStatus
    last_status_code: int | None
    next_attempt_at: dt.datetime | None


class WebhookDeliveryPage(Struct):
    items: list[WebhookDelivery]
    next: str | None


class WebhookEvent(Struct):
    """The body POSTed to an endpoint: `data` is the verification of the entry, as the vendor route."""

    id: uuid.UUID
    type: WebhookEventType
    position: int
    created_at: Timestamp
    data: Verification
