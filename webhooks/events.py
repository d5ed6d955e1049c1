"""Vendor webhooks without I/O: the events of an entry, their signature, retries, secrets, URL policy.

Which events an entry is, how an event is signed, the retry schedule, the signing secrets and
their encryption at rest, and which URLs are allowed.

The worker that delivers them is `webhooks.worker`; their SQL is in `webhooks.store`.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hmac
import ipaddress
import random
import secrets
import socket
import uuid
from dataclasses import dataclass

import yarl

import schemas

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # the contract allows 24..64
URL_RESOLVE_S_MAX = 2.0
ENDPOINTS_PER_VENDOR_MAX = 16
# Retry delays after the n-th failed attempt (Standard Webhooks' schedule): 5 s, 5 min, 30 min,
# 2 h, 5 h, 10 h, 10 h; about 27.6 h in all, then the delivery is `failed`. So at most
# `len(RETRY_DELAYS_S) + 1` attempts.
RETRY_DELAYS_S: tuple[float, ...] = (5.0, 5 * 60.0, 30 * 60.0, 2 * 3600.0, 5 * 3600.0, 10 * 3600.0, 10 * 3600.0)
ATTEMPTS_MAX = len(RETRY_DELAYS_S) + 1
RETRY_JITTER = 0.1  # later retries spread over +-10 %, so a receiver back up is not hit all at once
# Namespace of the event ids: an event's id is derived from its entry and type, so it is the same
# on every retry, after a crash of the worker, and for every endpoint of the vendor.
EVENT_ID_NAMESPACE = uuid.UUID("5b0f7e0e-2f7c-4d55-9b37-2a3f3b7c1e14")

# What each kind of journal entry is, for whom: (event type, the party it is for). Kinds not yet
# in the journal (issue 12 adds `kind`; holds later) are listed so they slot in; an entry without
# `kind` is a transfer. Only a party that is a vendor account with a subscribed endpoint gets it.
EVENTS_BY_KIND: dict[str, tuple[tuple[str, str], ...]] = {
    "transfer": (("transfer.received", "to"),),
    "refund": (("refund.created", "from"),),
    "hold": (("hold.created", "to"),),
    "capture": (("hold.captured", "to"), ("transfer.received", "to")),
    "void": (("hold.voided", "to"),),
    "expire": (("hold.expired", "to"),),
}
# The rank of each type in `event_seq` (position * 8 + rank): the order of a capture's two events.
TYPE_RANK: dict[str, int] = {name: rank for rank, name in enumerate(schemas.WEBHOOK_EVENT_TYPES)}
SEQ_PER_POSITION = 8
assert len(TYPE_RANK) <= SEQ_PER_POSITION


@dataclass(frozen=True, slots=True)
class Event:
    """One event of one entry for one vendor account; `seq` orders and identifies it per endpoint."""

    id: uuid.UUID
    type: str
    vendor_account_id: uuid.UUID
    position: int
    seq: int
    committed_at: str
    body: bytes


def entry_kind(entry: schemas.JournalEntry) -> str:
    return getattr(entry, "kind", "transfer")


def events_of(entry: schemas.JournalEntry, vendors: set[uuid.UUID], *, now: dt.datetime) -> list[Event]:
    """The events `entry` is for the vendor accounts among `vendors`, with their bodies."""
    found = []
    for event_type, party in EVENTS_BY_KIND.get(entry_kind(entry), ()):
        vendor = entry.to_account_id if party == "to" else entry.from_account_id
        other = entry.from_account_id if party == "to" else entry.to_account_id
        if vendor not in vendors:
            continue
        event_id = uuid.uuid5(EVENT_ID_NAMESPACE, f"{entry.transfer_id}/{event_type}")
        data = schemas.Verification(
            transfer_id=entry.transfer_id, vendor_account_id=vendor, payer_account_id=other, amount=entry.amount,
            currency=entry.currency, reference=entry.reference, committed_at=entry.committed_at,
            position=entry.position, hash=entry.hash, status="verified", projected_at=now,
        )
        body = schemas.encode(schemas.WebhookEvent(id=event_id, type=event_type, position=entry.position,
                                                   created_at=entry.committed_at, data=data))
        found.append(Event(event_id, event_type, vendor, entry.position,
                           entry.position * SEQ_PER_POSITION + TYPE_RANK[event_type], entry.committed_at, body))
    return found


# ---- signing (Standard Webhooks) ------------------------------------------------------------


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key a secret stands for: the worker derives it once per endpoint, not per attempt."""
    assert secret.startswith(SECRET_PREFIX)
    return base64.b64decode(secret[len(SECRET_PREFIX):])


def signature(key: bytes, *, event_id: str, timestamp: int, body: bytes) -> str:
    """`v1,` + base64 of HMAC-SHA256 keyed with the secret's bytes (`secret_key`) over
    `{id}.{timestamp}.{body}`."""
    signed = b"%s.%d.%s" % (event_id.encode(), timestamp, body)
    return "v1," + base64.b64encode(hmac.digest(key, signed, "sha256")).decode()


def signed_headers(key: bytes, *, event_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, event_id=event_id, timestamp=timestamp, body=body),
        "Content-Type": "application/json",
    }


# ---- retries --------------------------------------------------------------------------------


def retry_delay_s(attempts: int, *, rng: random.Random | None = None) -> float | None:
    """Seconds until the next attempt after `attempts` failed ones, or None: give up (`failed`)."""
    if attempts >= ATTEMPTS_MAX:
        return None
    delay = RETRY_DELAYS_S[attempts - 1]
    if attempts == 1:
        return delay  # the contract's "about 5 s after a failed attempt"
    return delay * (1 + (rng or random).uniform(-RETRY_JITTER, RETRY_JITTER))


# ---- secrets at rest ------------------------------------------------------------------------


class Keyring:
    """The Fernet keys of `LEDGER_WEBHOOK_KEY` (comma-separated): the first encrypts, every one
    decrypts. Rotation: put a new key first, restart, run `ledger webhooks rotate-key` (which
    re-encrypts every secret with the first key), then drop the old key."""

    def __init__(self, setting: str) -> None:
        from cryptography.fernet import Fernet, MultiFernet

        self._fernet = MultiFernet([Fernet(key.strip().encode()) for key in setting.split(",")])

    def encrypt(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def decrypt(self, token: str) -> str:
        return self._fernet.decrypt(token.encode()).decode()

    def rotate(self, token: str) -> str:
        return self._fernet.rotate(token.encode()).decode()


def new_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


# ---- which URLs ------------------------------------------------------------------------------


class UrlNotAllowed(ValueError):
    """The URL is not http(s), or it resolves to an address a webhook must not reach."""


# IPv6 prefixes whose addresses carry an IPv4 address that a router or a NAT64 gateway acts on, and
# how far right of it the IPv4 address's bits end. `is_global` on Python 3.11 judges only the IPv6
# address, so `64:ff9b::a9fe:a9fe` would reach the metadata address through a NAT64 gateway.
IPV4_EMBEDDINGS: tuple[tuple[ipaddress.IPv6Network, int], ...] = (
    (ipaddress.IPv6Network("::ffff:0:0/96"), 0),  # IPv4-mapped (RFC 4291)
    (ipaddress.IPv6Network("::ffff:0:0:0/96"), 0),  # SIIT, IPv4-translated (RFC 2765)
    (ipaddress.IPv6Network("::/96"), 0),  # IPv4-compatible (RFC 4291, deprecated): `::` and `::1` too
    (ipaddress.IPv6Network("64:ff9b::/96"), 0),  # NAT64 well-known prefix (RFC 6052)
    (ipaddress.IPv6Network("2002::/16"), 80),  # 6to4 (RFC 3056): bits 16..47
)
# Local-use NAT64 (RFC 8215): each network picks its own prefix length, so where the IPv4 address
# sits is unknown; none of it is globally reachable.
IPV6_NEVER_ALLOWED: tuple[ipaddress.IPv6Network, ...] = (ipaddress.IPv6Network("64:ff9b:1::/48"),)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address `ip` carries in one of `IPV4_EMBEDDINGS`, or None."""
    for network, shift in IPV4_EMBEDDINGS:
        if ip in network:
            return ipaddress.IPv4Address((int(ip) >> shift) & 0xFFFF_FFFF)
    return None


def address_allowed(address: str) -> bool:
    """Only global unicast addresses: no loopback, private, link-local, multicast, reserved or
    unspecified ones. An IPv6 address that carries an IPv4 address (`IPV4_EMBEDDINGS`) is judged
    as that IPv4 address."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in network for network in IPV6_NEVER_ALLOWED) or ip.is_site_local:
            return False
        embedded = embedded_ipv4(ip)
        if embedded is not None:
            ip = embedded
    return ip.is_global and not ip.is_multicast and not ip.is_reserved


def parse_url(url: str) -> yarl.URL:
    """The http(s) URL as the senders parse it (yarl, aiohttp's parser), or `UrlNotAllowed`.
    Registration parses with it too: `urlsplit` read `https://a\\@example.com/` as example.com,
    which yarl refuses, so such an endpoint was accepted and then never sent to."""
    try:
        parsed = yarl.URL(url)
        port = parsed.port
    except ValueError as error:
        raise UrlNotAllowed(f"the URL does not parse: {error}") from None
    if parsed.scheme not in ("https", "http"):
        raise UrlNotAllowed("the URL must be https:// or http://")
    if not parsed.raw_host or port is None:
        raise UrlNotAllowed("the URL has no host")
    return parsed


def split_url(url: str) -> tuple[str, int]:
    """The host and port of an http(s) URL, or `UrlNotAllowed`."""
    parsed = parse_url(url)
    return parsed.raw_host, parsed.port


async def check_url(url: str, *, allow_private: bool) -> None:
    """Raise `UrlNotAllowed` unless `url` is http(s) and (unless `allow_private`) every address its
    host resolves to, within `URL_RESOLVE_S_MAX`, is a public one."""
    host, port = split_url(url)
    if allow_private:
        return
    try:
        async with asyncio.timeout(URL_RESOLVE_S_MAX):
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as error:
        raise UrlNotAllowed(f"the host {host!r} does not resolve: {error}") from None
    for info in infos:
        if not address_allowed(info[4][0]):
            raise UrlNotAllowed(f"the host {host!r} resolves to a non-public address")
