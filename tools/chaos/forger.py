"""The forger: an attacker on the NATS network publishing junk on every ledger subject during the
run, at `FORGER_RATE_PER_S` at most, until the traffic stops.

What it publishes: random bytes; entries forged at the journal head + 1 (a made-up payment of a
wallet to a vendor, the attack of the security review's finding 1); entries forged far past the
head; and forged projector watermarks. The checks afterwards (nothing lost or duplicated, the
projection converged to the journal, the audit's `verifications`) are what prove none of it was
believed. The bank test's NATS has no auth, so a plain connection is all it takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import uuid

import nats
import psycopg

from ledger import store
from ledger.bus import SUBJECT, WATERMARK_SUBJECT
from tools.chaos.faults import Stack
from tools.chaos.options import FORGER_RATE_PER_S, Options
from tools.chaos.report import Observer, Report

RANDOM_BYTES_MAX = 512
FAR_AHEAD_MIN = 10**6
CONNECT_TIMEOUT_S = 2.0
HEAD_READ_EVERY = 10  # forged messages per read of the journal head


class Forger:
    def __init__(self, options: Options, stack: Stack, log: Observer, report: Report, *,
                 wallets: list[str], vendors: list[str]) -> None:
        self.o = options
        self.stack = stack
        self.log = log
        self.report = report
        self._wallets = wallets
        self._vendors = vendors
        self._head = (0, "0" * 64)

    async def run(self, stopped: asyncio.Event) -> None:
        rng = random.Random(self.o.seed ^ 0xF0F0)
        interval_s = 1.0 / FORGER_RATE_PER_S
        client = None
        sent = 0
        try:
            while not stopped.is_set():
                try:
                    if client is None or not client.is_connected:
                        client = await nats.connect(self.stack.nats.url.split(","), allow_reconnect=False,
                                                    connect_timeout=CONNECT_TIMEOUT_S)
                    if sent % HEAD_READ_EVERY == 0:
                        await self._read_head()
                    subject, payload = self._forge(rng)
                    await client.publish(subject, payload)
                    sent += 1
                    self.report.forged[subject] += 1
                except Exception:  # NATS or PostgreSQL restarting under the fault injector: go on
                    with contextlib.suppress(Exception):
                        if client is not None:
                            await client.close()
                    client = None
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stopped.wait(), interval_s)
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()

    async def _read_head(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.stack.pg.url, autocommit=True,
                                                         connect_timeout=CONNECT_TIMEOUT_S) as conn:
            head = await store.journal_head(conn)
        self._head = (head.position, head.hash)

    def _forge(self, rng: random.Random) -> tuple[str, bytes]:
        position, digest = self._head
        kind = rng.choice(("random", "next", "far", "watermark"))
        if kind == "random":
            return rng.choice((SUBJECT, WATERMARK_SUBJECT)), os.urandom(rng.randint(0, RANDOM_BYTES_MAX))
        if kind == "watermark":
            return WATERMARK_SUBJECT, str(rng.choice((position + rng.randint(1, 10**9), -1, 2**63))).encode()
        ahead = 1 if kind == "next" else rng.randint(FAR_AHEAD_MIN, 2**63 - 1 - position)
        return SUBJECT, json.dumps(self._entry(rng, position + ahead, digest)).encode()

    def _entry(self, rng: random.Random, position: int, prev_hash: str) -> dict:
        source, target = rng.choice(self._wallets), rng.choice(self._vendors)
        amount = rng.randint(1, 5_000_000)
        return {
            "position": position, "transfer_id": str(uuid.uuid4()), "from_account_id": source,
            "to_account_id": target, "amount": amount, "currency": "USD", "reference": "forged", "metadata": {},
            "postings": [{"account_id": source, "amount": -amount}, {"account_id": target, "amount": amount}],
            "committed_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "prev_hash": prev_hash, "hash": f"{rng.getrandbits(256):064x}",
        }
