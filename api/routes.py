"""The HTTP routes of the contract, each declared once: roles, ownership, answers, problems, headers.

Each says who may call it, whose resource it acts on, what it answers and which problems its
handler can raise. `api.framework` runs the checks before the handler (roles, then ownership
through the lookups of `api.owners`) and `api.openapi` documents the declarations. The handlers
read straight down (decode, act) in `api.accounts`, `api.payments`, `api.vendors`, `api.journal`
and `api.search`.
"""

from __future__ import annotations

import schemas
from api import auth, batches, owners
from api.framework import ALL_ROLES, NDJSON, PROJECTION_POSITION, Header, JournalQuery, Ownership, PageQuery, Route
from api.framework import WaitQuery
from api.framework import IdPageQuery, PointQuery
from api.search import StatementSearchQuery, TransfersQuery, VendorSearchQuery, list_transfers
from ledger import config, domain
from schemas.batches import BatchAnswer, BatchCreate
from api.accounts import (
    create_account, create_principal, create_token, get_account, get_me, get_statement, list_accounts, list_tokens,
    revoke_token,
)
from api.payments import (
    capture_hold, create_hold, create_refund, create_transfer, get_hold, get_transfer, void_hold,
)
from api.vendors import (
    create_webhook, delete_webhook, get_verification, list_verifications, list_webhook_deliveries,
    list_webhooks,
)
from api.journal import (
    ConsistencyQuery, InclusionQuery, TreeQuery, get_consistency_proof, get_inclusion_proof, get_journal,
    get_journal_head, get_latest_checkpoint, get_tree, healthz, readyz,
)


# ---- the declarations -----------------------------------------------------------------------

EVERYONE = ALL_ROLES
READERS = auth.READ_EVERYTHING
VENDOR_READERS = auth.READ_EVERYTHING | {"vendor"}
WEBHOOK_OWNERS = frozenset({"admin", "vendor"})
REJECTIONS = frozenset(
    rejection.value for rejection in domain.Rejection if rejection not in domain.REFUND_ONLY | domain.HOLD_ONLY
)
# A refund's accounts and currency are the original's, so same_account, account_not_found and
# currency_mismatch cannot happen; what it can meet after its ownership, in the contract's order.
REFUND_CODES = frozenset({
    "idempotency_key_reused", "not_refundable", "refund_exceeds_transfer", "insufficient_funds",
    "balance_limit_exceeded", "queue_full",
})

# Whose each resource is (`api.owners`): admin and auditor reach all, others only their own.
OWN_ACCOUNT = Ownership("account_id", owners.account)
OWN_VENDOR = Ownership("account_id", owners.vendor_account, absent="no such vendor account")
OWN_TRANSFER = Ownership("transfer_id", owners.transfer)
OWN_PAYMENT = Ownership("transfer_id", owners.payment)  # refunded by the receiver's owner
OWN_HOLD = Ownership("hold_id", owners.hold_of_parties)
OWN_HOLD_PAYEE = Ownership("hold_id", owners.hold_of_payee)
# Admin and auditor prove any position; a position past the head is the handler's to answer.
OWN_ENTRY = Ownership("position", owners.entry_at, readers_look=False)

PROJECTED = Header(
    PROJECTION_POSITION, "Every journal entry with position <= N is in the projection.",
    # A 404 about the vendor account itself is answered before the projection is read.
    on={200: True, 404: False},
)
REPLAYED = Header(
    "Idempotency-Replayed", "`true` when the answer is a replay of an earlier request with this key.",
    on={201: False}, schema={"type": "string", "enum": ["true"]},
)

ROUTES: list[Route] = [
    Route("POST", "/v1/principals", create_principal, {201: schemas.Principal}, roles=frozenset({"admin"}),
          body=schemas.PrincipalCreate, summary="Create a principal; its token is shown once."),
    Route("POST", "/v1/accounts", create_account, {200: schemas.Account, 201: schemas.Account},
          roles=frozenset({"admin"}), codes=frozenset({"owner_not_found", "account_exists"}),
          body=schemas.AccountCreate, summary="Create an account (idempotent by id)."),
    Route("GET", "/v1/accounts/{account_id}", get_account, {200: schemas.Account}, roles=EVERYONE,
          codes=frozenset({"position_out_of_range"}), path_ids=("account_id",), ownership=OWN_ACCOUNT,
          query=PointQuery, summary="An account with its committed balance, or its balance at a position or time."),
    Route("GET", "/v1/accounts", list_accounts, {200: schemas.AccountPage}, roles=EVERYONE, query=IdPageQuery,
          summary="The caller's own accounts (admin, auditor: all), in id order."),
    Route("GET", "/v1/accounts/{account_id}/entries", get_statement, {200: schemas.StatementPage}, roles=EVERYONE,
          path_ids=("account_id",), ownership=OWN_ACCOUNT, query=StatementSearchQuery,
          summary="The account's statement, read from the journal, oldest first; searchable by metadata."),
    Route("POST", "/v1/transfers/{transfer_id}/refunds", create_refund, {201: schemas.Transfer},
          roles=frozenset({"admin", "vendor"}),
          codes=REFUND_CODES,
          headers=(REPLAYED,), body=schemas.RefundCreate, path_ids=("transfer_id",), ownership=OWN_PAYMENT,
          idempotency=True,
          summary="Refund (part of) a payment to a vendor account, back to the payer."),
    Route("POST", "/v1/transfers", create_transfer, {201: schemas.Transfer}, roles=frozenset({"admin", "client"}),
          codes=REJECTIONS | {"queue_full"}, headers=(REPLAYED,),
          body=schemas.TransferCreate, idempotency=True, summary="Move money between two accounts of one currency."),
    Route("GET", "/v1/transfers/{transfer_id}", get_transfer, {200: schemas.Transfer}, roles=EVERYONE,
          path_ids=("transfer_id",), ownership=OWN_TRANSFER,
          summary="A committed transfer, read from the journal."),
    Route("GET", "/v1/vendors/{account_id}/transfers/{transfer_id}/verification", get_verification,
          {200: schemas.Verification}, roles=VENDOR_READERS,
          codes=frozenset({"not_found", "projection_behind", "too_many_waiters"}), headers=(PROJECTED,),
          path_ids=("account_id", "transfer_id"), ownership=OWN_VENDOR, query=WaitQuery,
          summary="Verify a transfer into a vendor account, from the projection."),
    Route("GET", "/v1/vendors/{account_id}/transfers", list_verifications, {200: schemas.VerificationPage},
          roles=VENDOR_READERS, headers=(PROJECTED,), path_ids=("account_id",), ownership=OWN_VENDOR,
          query=VendorSearchQuery,
          summary="Transfers into a vendor account, from the projection, oldest first (`order=desc`: newest);"
                  " searchable by metadata."),
    Route("GET", "/v1/transfers", list_transfers, {200: schemas.TransferPage}, roles=READERS, query=TransfersQuery,
          summary="Entries of the whole journal (or of one account), oldest first; searchable by metadata."),
    Route("GET", "/v1/journal", get_journal, {200: schemas.JournalEntry}, roles=READERS, query=JournalQuery,
          media=NDJSON, summary="Journal entries in position order, as NDJSON."),
    Route("GET", "/v1/journal/head", get_journal_head, {200: schemas.JournalHead}, roles=READERS,
          summary="Position and hash of the last entry."),
    Route("POST", "/v1/principals/{principal_id}/tokens", create_token, {201: schemas.TokenCreated},
          roles=frozenset({"admin"}), codes=frozenset({"not_found"}), path_ids=("principal_id",),
          summary="An extra token for the principal (rotation); shown once."),
    Route("GET", "/v1/principals/{principal_id}/tokens", list_tokens, {200: schemas.TokenList},
          roles=frozenset({"admin"}), codes=frozenset({"not_found"}), path_ids=("principal_id",),
          summary="The principal's tokens, never the tokens themselves."),
    Route("DELETE", "/v1/principals/{principal_id}/tokens/{token_id}", revoke_token, {204: None},
          roles=frozenset({"admin"}), codes=frozenset({"not_found"}), path_ids=("principal_id", "token_id"),
          summary="Revoke a token: refused on every API process within a second."),
    Route("GET", "/v1/me", get_me, {200: schemas.Caller}, roles=EVERYONE,
          summary="The caller's own principal: its id, role and name (never its token)."),
    Route("GET", "/healthz", healthz, {200: schemas.Health}, public=True, summary="Liveness."),
    Route("GET", "/readyz", readyz, {200: schemas.Health, 503: schemas.Health}, public=True,
          summary="Database and NATS reachable."),
    Route("GET", "/v1/journal/tree", get_tree, {200: schemas.TreeHead}, roles=EVERYONE,
          codes=frozenset({"tree_size_out_of_range", "tree_behind"}), query=TreeQuery,
          summary="The RFC 9162 Merkle root of the journal's first tree_size entries (default: all)."),
    Route("GET", "/v1/journal/proofs/inclusion", get_inclusion_proof, {200: schemas.InclusionProof}, roles=EVERYONE,
          codes=frozenset({"tree_size_out_of_range", "position_out_of_range", "tree_behind"}), ownership=OWN_ENTRY,
          query=InclusionQuery,
          summary="RFC 9162 inclusion proof of the entry at position in the tree of tree_size entries."),
    Route("GET", "/v1/journal/proofs/consistency", get_consistency_proof, {200: schemas.ConsistencyProof},
          roles=EVERYONE, codes=frozenset({"tree_size_out_of_range", "tree_behind"}), query=ConsistencyQuery,
          summary="RFC 9162 consistency proof: the tree of from_size entries is a prefix of the tree of to_size."),
    Route("GET", "/v1/journal/checkpoints/latest", get_latest_checkpoint, {200: schemas.SignedTreeHead},
          roles=EVERYONE, codes=frozenset({"not_found"}),
          summary="The latest signed tree head (Ed25519); verify it against a pinned public key."),
    Route("POST", "/v1/vendors/{account_id}/webhooks", create_webhook, {201: schemas.WebhookCreated},
          roles=WEBHOOK_OWNERS, codes=frozenset({"webhook_url_not_allowed", "too_many_webhooks"}),
          body=schemas.WebhookCreate, path_ids=("account_id",), ownership=OWN_VENDOR,
          summary="Register a webhook endpoint; its signing secret is shown once."),
    Route("GET", "/v1/vendors/{account_id}/webhooks", list_webhooks, {200: schemas.WebhookPage},
          roles=WEBHOOK_OWNERS, path_ids=("account_id",), ownership=OWN_VENDOR, query=PageQuery,
          summary="The vendor account's webhook endpoints, without their secrets."),
    Route("DELETE", "/v1/vendors/{account_id}/webhooks/{webhook_id}", delete_webhook, {204: None},
          roles=WEBHOOK_OWNERS, codes=frozenset({"not_found"}), path_ids=("account_id", "webhook_id"),
          ownership=OWN_VENDOR, summary="Delete a webhook endpoint: no delivery to it starts afterwards."),
    Route("GET", "/v1/vendors/{account_id}/webhooks/{webhook_id}/deliveries", list_webhook_deliveries,
          {200: schemas.WebhookDeliveryPage}, roles=WEBHOOK_OWNERS, codes=frozenset({"not_found"}),
          path_ids=("account_id", "webhook_id"), ownership=OWN_VENDOR, query=PageQuery,
          summary="The endpoint's deliveries, in journal order, with their attempts."),
    Route("POST", "/v1/holds", create_hold, {201: schemas.Hold}, roles=frozenset({"admin", "client"}),
          codes=REJECTIONS | {"queue_full"}, headers=(REPLAYED,), body=schemas.HoldCreate, idempotency=True,
          summary="Reserve money of a wallet for a vendor, until captured, voided or expired."),
    Route("POST", "/v1/holds/{hold_id}/capture", capture_hold, {201: schemas.Hold},
          roles=frozenset({"admin", "client", "vendor"}),
          codes=frozenset({"idempotency_key_reused", "hold_not_pending", "hold_expired", "capture_exceeds_hold",
                           "balance_limit_exceeded", "queue_full"}),
          headers=(REPLAYED,), body=schemas.HoldCapture, path_ids=("hold_id",), ownership=OWN_HOLD_PAYEE,
          idempotency=True,
          summary="Pay (part of) a hold to its vendor; the rest goes back to the wallet, in one entry."),
    Route("POST", "/v1/holds/{hold_id}/void", void_hold, {201: schemas.Hold},
          roles=frozenset({"admin", "client", "vendor"}),
          codes=frozenset({"idempotency_key_reused", "hold_not_pending", "balance_limit_exceeded", "queue_full"}),
          headers=(REPLAYED,), path_ids=("hold_id",), ownership=OWN_HOLD, idempotency=True,
          summary="Release a hold: the whole amount goes back to the wallet."),
    Route("GET", "/v1/holds/{hold_id}", get_hold, {200: schemas.Hold}, roles=EVERYONE,
          path_ids=("hold_id",), ownership=OWN_HOLD, summary="A hold, as it is now."),
]


# A batch's items are checked against their single routes' declarations (roles, ownership).
_BY_NAME = {route.name: route for route in ROUTES}
ROUTES.append(
    Route("POST", "/v1/batches",
          batches.batch_handler({item: _BY_NAME[name] for item, name in batches.ITEM_ROUTE_NAMES.items()}),
          {200: BatchAnswer}, roles=frozenset({"admin", "client", "vendor"}), body=BatchCreate,
          body_bytes_max=config.BATCH_BODY_BYTES_MAX,
          summary="Many transfers, refunds, holds, captures and voids; each item answered as its single route."),
)
