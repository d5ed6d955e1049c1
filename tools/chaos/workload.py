"""The workload: a world of funded wallets and vendors, the clients paying through the API
processes, and the bookkeeping of every idempotency key (`KeyResult`) the checks judge later.

Every client retries its own key, with the same body, until it gets a definitive answer (201 or
4xx) or the drain deadline passes; a 503 or a broken connection is only "try again".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid

import aiohttp

from tools.chaos.faults import Stack
from tools.chaos.controls import Controller
from tools.chaos.holds import Holder
from tools.chaos.options import (
    BACKOFF_S_MAX, BACKOFF_S_MIN, CONTROL_REJECTIONS, CURRENCY, EXPECTED_REJECTIONS, OTHER_CURRENCY, PROCESS_READY_S_MAX,
    READ_BACK_WAIT_MS, REFUND_INTERVAL_S, RETRIED_STATUSES, SHARE_LARGE, SHARE_OTHER_CURRENCY, SHARE_READ_BACK,
    SHARE_REFUND_RACE, SHARE_REFUNDED, SHARE_SAME_ACCOUNT, SHARE_TWIN, SHARE_UNKNOWN_TARGET, SHARE_VENDOR,
    SMALL_AMOUNT_MAX, KeyResult, Options,
)
from tools.chaos.report import Observer, Report


def decode(raw: bytes):
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _reason(code: str | None, answer) -> str:
    detail = answer.get("detail", "") if isinstance(answer, dict) else ""
    if code == "unavailable" and "serializ" in detail:
        return "unavailable (serialization, retries exhausted)"
    if code == "unavailable":
        return "unavailable (database)"
    return str(code)


async def _admin_post(stack: Stack, path: str, body: dict) -> dict:
    async with stack.session.post(stack.apis[0].url + path, json=body,
                                  headers={"Authorization": f"Bearer {stack.admin_token}"}) as reply:
        payload = await reply.json(content_type=None)
        if reply.status != 201:
            raise RuntimeError(f"setup {path} answered {reply.status}: {payload}")
        return payload


class World:
    """The accounts the clients pay between, opened once by the admin, and the payments they make."""

    def __init__(self, options: Options) -> None:
        self.o = options
        self.clients: list[tuple[str, str, str]] = []  # (principal id, token, wallet id)
        self.vendor_accounts: list[str] = []
        self.vendor_owners: dict[str, tuple[str, str]] = {}  # vendor account -> (principal id, token)
        self.other_currency_vendor = ""
        self.funding_account = ""

    async def open(self, stack: Stack) -> None:
        self.funding_account = (await _admin_post(stack, "/v1/accounts", {"kind": "system", "currency": CURRENCY,
                                                                           "name": "funding"}))["id"]
        for index in range(self.o.wallets):
            client = await _admin_post(stack, "/v1/principals", {"role": "client", "name": f"client {index}"})
            wallet = await _admin_post(stack, "/v1/accounts", {"kind": "wallet", "currency": CURRENCY,
                                                                "owner_id": client["id"], "name": f"wallet {index}"})
            self.clients.append((client["id"], client["token"], wallet["id"]))
        vendor_owner = None
        for index in range(self.o.vendors):
            vendor = await _admin_post(stack, "/v1/principals", {"role": "vendor", "name": f"vendor {index}"})
            vendor_owner = vendor_owner or vendor["id"]
            account = await _admin_post(stack, "/v1/accounts", {"kind": "vendor", "currency": CURRENCY,
                                                                 "owner_id": vendor["id"], "name": f"vendor {index}"})
            self.vendor_accounts.append(account["id"])
            self.vendor_owners[account["id"]] = (vendor["id"], vendor["token"])
        self.other_currency_vendor = (await _admin_post(
            stack, "/v1/accounts", {"kind": "vendor", "currency": OTHER_CURRENCY, "owner_id": vendor_owner, "name": "eur"}
        ))["id"]

    def payment(self, rng: random.Random, client: tuple[str, str, str]) -> dict:
        wallet = client[2]
        currency = CURRENCY
        draw = rng.random()
        large = False
        if draw < SHARE_SAME_ACCOUNT:
            target = wallet
        elif draw < SHARE_SAME_ACCOUNT + SHARE_UNKNOWN_TARGET:
            target = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        elif draw < SHARE_SAME_ACCOUNT + SHARE_UNKNOWN_TARGET + SHARE_OTHER_CURRENCY:
            target = self.other_currency_vendor
        elif draw < SHARE_SAME_ACCOUNT + SHARE_UNKNOWN_TARGET + SHARE_OTHER_CURRENCY + SHARE_VENDOR:
            target = rng.choice(self.vendor_accounts)
        else:
            target = rng.choice([c[2] for c in self.clients if c[2] != wallet])
            large = rng.random() < SHARE_LARGE
        amount = rng.randint(1, 2 * self.o.funding_per_wallet) if large else rng.randint(1, SMALL_AMOUNT_MAX)
        return {"from_account_id": wallet, "to_account_id": target, "amount": amount, "currency": currency}


class Workload:
    """The clients, the treasurer who refunds the vendors, and the record of every key they sent."""

    def __init__(self, options: Options, stack: Stack, log: Observer, report: Report) -> None:
        self.o = options
        self.stack = stack
        self.log = log
        self.report = report
        self.world = World(options)
        self.holder = Holder(self)
        self.controller = Controller(self)
        self.results: list[KeyResult] = []
        # Clients stop starting new keys once this is set, and every retry stops at `final_deadline`.
        self.stopped = asyncio.Event()
        self.final_deadline = 0.0

    async def build_world(self) -> None:
        await self.world.open(self.stack)
        rng = random.Random(f"{self.o.seed}/funding")
        self.final_deadline = time.monotonic() + PROCESS_READY_S_MAX
        for index, (_, _, wallet) in enumerate(self.world.clients):
            body = {"from_account_id": self.world.funding_account, "to_account_id": wallet,
                    "amount": self.o.funding_per_wallet, "currency": CURRENCY, "reference": f"funding-{index}"}
            result = await self.settle(rng, self.stack.admin_id, self.stack.admin_token, f"funding-{index}", body,
                                       "funding")
            if result.status != 201:
                raise RuntimeError(f"funding wallet {index} answered {result.status} {result.code}")
        self.log.say(f"world: {len(self.world.clients)} funded wallets, {len(self.world.vendor_accounts)} vendors"
                     f" (+1 in {OTHER_CURRENCY}), funding {self.o.funding_per_wallet} each")

    # ---- clients -----------------------------------------------------------------------

    async def settle(self, rng: random.Random, principal_id: str, token: str, key: str, body: dict,
                     purpose: str, *, copies: int = 1, refund_of: KeyResult | None = None) -> KeyResult:
        """Send one key until it gets a definitive answer (201 or 4xx), or the drain deadline.

        With `copies` > 1 the same request is sent that many times concurrently, as an impatient
        client does: every 201 must carry the same transfer, and a 201 of any copy is the key's
        answer (a 4xx does not use up a key, so a copy decided earlier may have been refused)."""
        body = {**body, "reference": body.get("reference", key)}
        result = KeyResult(principal_id, key, body, purpose, copies=copies)
        if refund_of is not None:
            paid = refund_of.body
            result.path, result.refund_of = f"/v1/transfers/{refund_of.transfer_id}/refunds", refund_of.transfer_id
            result.entry = {"from_account_id": paid["to_account_id"], "to_account_id": paid["from_account_id"],
                            "amount": body["amount"], "currency": paid["currency"], "reference": body["reference"]}
        self.results.append(result)
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
        rngs = [rng] + [random.Random(rng.random()) for _ in range(copies - 1)]
        await asyncio.gather(*(self._send(r, result, headers) for r in rngs))
        return result

    async def _send(self, rng: random.Random, result: KeyResult, headers: dict) -> None:
        index = rng.randrange(len(self.stack.apis))
        attempt = 0
        while True:
            remaining = self.final_deadline - time.monotonic()
            if remaining <= 0:
                return
            api = self.stack.apis[index]
            attempt += 1
            result.attempts += 1
            self.report.requests += 1
            timeout_s = min(self.o.client_timeout_s, remaining)
            sent = time.monotonic()
            try:
                async with self.stack.session.post(api.url + result.path, json=result.body, headers=headers,
                                                   timeout=aiohttp.ClientTimeout(total=timeout_s)) as reply:
                    status, raw, replayed = reply.status, await reply.read(), reply.headers.get("Idempotency-Replayed")
            except (asyncio.TimeoutError, TimeoutError):
                result.failures.add("client timeout")
                if timeout_s >= self.o.client_timeout_s:
                    self.report.retried["client_timeout"] += 1
                    self.log.violation(f"{api.name} did not answer {result.key} within {timeout_s:g} s (hang)")
                next_api = True
            except aiohttp.ClientError:
                result.failures.add("connection error")
                self.report.retried["connection_error"] += 1
                next_api = True
            else:
                if self._answered(result, api.name, status, raw, replayed == "true", sent):
                    return
                next_api = rng.random() < 0.5
            if next_api:
                index = (index + 1) % len(self.stack.apis)
            await self.backoff(rng, attempt)

    def _answered(self, result: KeyResult, api_name: str, status: int, raw: bytes, replayed: bool,
                  sent: float) -> bool:
        """Record one answer; True when it is definitive (201 or 4xx), False when the key is retried."""
        answer = decode(raw)
        code = answer.get("code") if isinstance(answer, dict) else None
        if status == 201:
            self._acknowledged(result, answer, replayed, api_name)
            return True
        if 400 <= status < 500 and status not in RETRIED_STATUSES:
            if result.status is None:
                result.status, result.code, result.answered_at = status, code, time.monotonic()
            self.report.rejected[f"{status} {code}"] += 1
            if code not in EXPECTED_REJECTIONS:
                self.log.violation(f"{result.key} answered {status} {code}: {answer}")
            return True
        result.failures.add(f"{status} {code}")
        if status in RETRIED_STATUSES:
            self.report.retried[f"{status} {_reason(code, answer)}"] += 1
        else:
            self.report.retried[f"{status} {code}"] += 1
            self.log.violation(f"{api_name} answered {result.key} with {status} after {time.monotonic() - sent:.2f}s: "
                               f"{raw[:300]!r}")
        return False

    def _acknowledged(self, result: KeyResult, answer: dict, replayed: bool, api_name: str) -> None:
        body = result.entry
        result.status, result.answered_at = 201, time.monotonic()
        result.transfer_id = answer.get("id") if isinstance(answer, dict) else None
        result.position = answer.get("position", 0) if isinstance(answer, dict) else 0
        result.ids_seen.add(result.transfer_id)
        self.report.replayed += replayed
        if replayed and result.copies == 1:
            self.report.replayed_after[" + ".join(sorted(result.failures)) or "nothing (a fresh key replayed)"] += 1
        shape = {k: answer.get(k) for k in ("from_account_id", "to_account_id", "amount", "currency", "reference")} \
            if isinstance(answer, dict) else {}
        wanted = {k: body[k] for k in shape}
        if shape != wanted or answer.get("status") != "committed":
            self.log.violation(f"{api_name} acknowledged {result.key} with a different transfer: {answer} for {body}")

    async def backoff(self, rng: random.Random, attempt: int) -> None:
        delay = min(BACKOFF_S_MAX, BACKOFF_S_MIN * 2 ** min(attempt, 10)) * rng.uniform(0.5, 1.0)
        await asyncio.sleep(max(0.0, min(delay, self.final_deadline - time.monotonic())))

    async def worker(self, index: int) -> None:
        rng = random.Random(f"{self.o.seed}/worker/{index}")
        number = 0
        while not self.stopped.is_set():
            client = rng.choice(self.world.clients)
            copies = 2 if rng.random() < SHARE_TWIN else 1
            result = await self.settle(rng, client[0], client[1], f"chaos-{index}-{number}",
                                       self.world.payment(rng, client), "payment", copies=copies)
            number += 1
            if result.status == 201 and rng.random() < SHARE_READ_BACK:
                await self.read_back(rng, client, result)
            target = result.body["to_account_id"]
            if result.status == 201 and target in self.world.vendor_owners and rng.random() < SHARE_REFUNDED:
                await self.refund(rng, f"chaos-{index}-{number - 1}", result)

    async def refund(self, rng: random.Random, key: str, paid: KeyResult) -> None:
        """The vendor refunds half of the payment; sometimes twice at once with two keys, 60% each,
        so at most one of the two may commit (`refund_exceeds_transfer` for the other)."""
        owner_id, token = self.world.vendor_owners[paid.body["to_account_id"]]
        amount = paid.body["amount"]
        if rng.random() < SHARE_REFUND_RACE and amount >= 2:
            share = max(1, amount * 6 // 10)
            await asyncio.gather(*(
                self.settle(random.Random(rng.random()), owner_id, token, f"{key}-refund-{n}", {"amount": share},
                            "vendor_refund", refund_of=paid)
                for n in range(2)
            ))
        else:
            await self.settle(rng, owner_id, token, f"{key}-refund", {"amount": max(1, amount // 2)},
                              "vendor_refund", refund_of=paid)

    async def treasurer(self) -> None:
        """Pay each vendor's whole balance back to a random wallet, one vendor at a time. A vendor's
        own refunds between the read and this transfer may leave it short (422, counted)."""
        rng = random.Random(f"{self.o.seed}/treasurer")
        number = 0
        while not self.stopped.is_set():
            await asyncio.sleep(REFUND_INTERVAL_S)
            vendor = self.world.vendor_accounts[number % len(self.world.vendor_accounts)]
            balance = await self._balance(vendor)
            if balance:
                body = {"from_account_id": vendor, "to_account_id": rng.choice(self.world.clients)[2], "amount": balance,
                        "currency": CURRENCY}
                result = await self.settle(rng, self.stack.admin_id, self.stack.admin_token, f"refund-{number}", body,
                                           "refund")
                # Vendors now also refund payments, so a vendor may have paid some back between
                # the read and this transfer: insufficient funds is then an answer, not a fault.
                if result.status is not None and result.status != 201 and result.code not in (
                        "insufficient_funds", *CONTROL_REJECTIONS):
                    self.log.violation(f"refund of {balance} from vendor {vendor} answered {result.status}"
                                       f" {result.code}")
            number += 1

    async def _balance(self, account_id: str) -> int | None:
        """The committed balance, or None while no API process can tell (a fault is going on)."""
        apis = self.stack.apis
        api = apis[0] if apis[0].alive else apis[-1]
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with self.stack.session.get(api.url + f"/v1/accounts/{account_id}",
                                              headers={"Authorization": f"Bearer {self.stack.admin_token}"},
                                              timeout=aiohttp.ClientTimeout(total=self.o.client_timeout_s)) as reply:
                answer = decode(await reply.read())
                if reply.status == 200:
                    return answer["balance"]
                if reply.status != 503:
                    self.log.violation(f"{api.name} answered GET account {account_id} with {reply.status}: {answer}")
        return None

    async def read_back(self, rng: random.Random, client: tuple[str, str, str], result: KeyResult) -> None:
        """Read an acknowledged payment back until a definitive answer (bounded by the drain):
        a payment to a vendor from the projection, waiting for its position; any other from the
        payer's wallet on the write side, which must already include it."""
        target = result.body["to_account_id"]
        if target in self.world.vendor_accounts:
            kind, token = "verification", self.stack.admin_token
            path = (f"/v1/vendors/{target}/transfers/{result.transfer_id}/verification"
                    f"?min_position={result.position}&wait_ms={READ_BACK_WAIT_MS}")
        else:
            kind, token = "account", client[1]
            path = f"/v1/accounts/{client[2]}"
        index = rng.randrange(len(self.stack.apis))
        attempt = 0
        while time.monotonic() < self.final_deadline:
            attempt += 1
            api = self.stack.apis[index]
            try:
                async with self.stack.session.get(api.url + path, headers={"Authorization": f"Bearer {token}"},
                                                  timeout=aiohttp.ClientTimeout(total=self.o.client_timeout_s)) as reply:
                    status, answer = reply.status, decode(await reply.read())
            except (aiohttp.ClientError, asyncio.TimeoutError):
                index = (index + 1) % len(self.stack.apis)
                await self.backoff(rng, attempt)
                continue
            code = answer.get("code") if isinstance(answer, dict) else None
            if status == 200:
                self._check_read_back(kind, result, answer, api.name)
                return
            if status == 503:
                self.report.read_backs[f"{kind} retried 503 {code}"] += 1
                index = (index + 1) % len(self.stack.apis)
                await self.backoff(rng, attempt)
                continue
            self.report.read_backs[f"{kind} {status} {code}"] += 1
            self.log.violation(f"{api.name} answered the read-back of {result.key} ({kind}) with {status}: {answer}")
            return
        self.report.read_backs[f"{kind} unresolved"] += 1
        self.log.violation(f"read-back of {result.key} ({kind}) got no answer before the drain deadline")

    def _check_read_back(self, kind: str, result: KeyResult, answer: dict, api_name: str) -> None:
        self.report.read_backs[f"{kind} ok"] += 1
        if kind == "verification":
            fine = answer.get("transfer_id") == result.transfer_id and answer.get("amount") == result.body["amount"]
        else:
            fine = answer.get("position", 0) >= result.position and answer.get("balance", -1) >= 0
        if not fine:
            self.log.violation(f"{api_name}: read-back of {result.key} ({kind}) is stale or wrong: {answer}")
