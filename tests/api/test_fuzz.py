"""Schemathesis against the running API: no generated request gets a 5xx, and every answer is one
the OpenAPI document describes (a documented status, its content type, its schema, its headers).

The generator runs in a worker thread (schemathesis calls with `requests`, which blocks) while the
API keeps serving in the test's event loop. Every operation is fuzzed with positive (valid by the
document) and negative (invalid) cases, with each role's token, against random ids and against
accounts and a transfer that exist, so the answers are not all 404s and 403s. Some negative cases
drop the Authorization header on purpose (schemathesis negates the security scheme too), hence
the share of 401s. The fuzzing writes principals, accounts and transfers into the shared database;
it never moves money out of a system account, so no balance can approach the BIGINT range.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import threading

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.slow  # fuzz: generated requests against every operation


def no_server_error(ctx, response, case) -> None:
    """No 5xx, except the contract's 503 for a projection read asked to wait for a position the
    projection has not reached (fuzzed `min_position`s are far ahead of the journal)."""
    if response.status_code < 500:
        return
    code = response.json().get("code") if "json" in response.headers.get("content-type", [""])[0] else None
    assert response.status_code == 503 and code == "projection_behind", f"{response.status_code} {response.text}"


CHECKS = [
    no_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
EXAMPLES_PER_OPERATION_AND_MODE = 65
REQUESTS_MIN = 1000
REQUEST_TIMEOUT_S = 10
WALLET_FUNDS = 1_000_000


@dataclasses.dataclass(frozen=True)
class Known:
    """Things that exist, so generated requests also reach past the 404s."""

    tokens: dict[str, str]  # role -> token
    wallet: str
    vendor: str
    transfer: str


class Tally:
    """Requests actually sent, by operation and status (the worker thread writes, the test reads)."""

    def __init__(self) -> None:
        self.by_operation: collections.Counter[str] = collections.Counter()
        self.by_status: collections.Counter[int] = collections.Counter()
        self._lock = threading.Lock()

    def add(self, operation: str, status: int) -> None:
        with self._lock:
            self.by_operation[operation] += 1
            self.by_status[status] += 1

    @property
    def sent(self) -> int:
        return sum(self.by_operation.values())


def _roles_for(operation) -> list[str]:
    """Mostly admin (who may call everything, so cases reach the handlers), plus every other role."""
    if operation.path == "/v1/transfers":
        return ["admin", "client", "client", "vendor"]
    return ["admin", "admin", "client", "vendor", "auditor"]


def _strategy(operation, mode: GenerationMode, known: Known):
    """Random cases, and cases aimed at what exists: known path ids, transfers between known
    accounts. A known vendor's verification never waits (wait_ms 0), to keep the run short."""
    strategies = [operation.as_strategy(generation_mode=mode)]
    names = {p.name for p in operation.path_parameters}
    if names == {"account_id"}:
        for account in (known.wallet, known.vendor):
            strategies.append(operation.as_strategy(generation_mode=mode, path_parameters={"account_id": account}))
    elif names == {"transfer_id"}:
        strategies.append(operation.as_strategy(generation_mode=mode, path_parameters={"transfer_id": known.transfer}))
    elif names == {"account_id", "transfer_id"}:
        known_ids = {"account_id": known.vendor, "transfer_id": known.transfer}
        strategies.append(operation.as_strategy(generation_mode=mode, path_parameters=known_ids, query={"wait_ms": 0}))
    cases = st.one_of(strategies)
    if operation.path == "/v1/transfers" and mode is GenerationMode.POSITIVE:
        cases = st.tuples(cases, st.booleans()).map(lambda pair: _between_known_accounts(*pair, known))
    return st.tuples(cases, st.sampled_from(_roles_for(operation)))


def _between_known_accounts(case, aimed: bool, known: Known):
    if aimed and isinstance(case.body, dict):
        case.body.update(from_account_id=known.wallet, to_account_id=known.vendor, currency="USD")
    return case


def _fuzz_operation(operation, mode: GenerationMode, *, base_url: str, known: Known, tally: Tally,
                    session: requests.Session) -> None:
    @hypothesis.settings(max_examples=EXAMPLES_PER_OPERATION_AND_MODE, deadline=None, database=None,
                         derandomize=True, suppress_health_check=list(HealthCheck),
                         phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])
    @given(drawn=_strategy(operation, mode, known))
    def run(drawn) -> None:
        case, role = drawn
        headers = {"Authorization": f"Bearer {known.tokens[role]}"}
        response = case.call(base_url=base_url, session=session, headers=headers, timeout=REQUEST_TIMEOUT_S)
        tally.add(operation.label, response.status_code)
        case.validate_response(response, checks=CHECKS, headers=headers)

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        # An operation without parameters or a body has nothing to make invalid.
        assert mode is GenerationMode.NEGATIVE, operation.label


def _fuzz(document: dict, base_url: str, known: Known) -> Tally:
    schema = schemathesis.openapi.from_dict(document)
    tally = Tally()
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _fuzz_operation(operation, mode, base_url=base_url, known=known, tally=tally, session=session)
    return tally


async def _known(stack) -> Known:
    wallet = await stack.funded_wallet(WALLET_FUNDS)
    vendor = await stack.vendor()
    _, auditor = await stack.principal("auditor")
    paid = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 1)
    assert paid.status == 201, paid.text
    tokens = {"admin": stack.admin, "client": wallet.token, "vendor": vendor.token, "auditor": auditor}
    return Known(tokens=tokens, wallet=wallet.account_id, vendor=vendor.account_id, transfer=paid.body["id"])


async def test_generated_requests_get_no_5xx_and_match_the_document(stack):
    document = (await stack.client.get("/openapi.json")).body
    known = await _known(stack)
    tally = await asyncio.to_thread(_fuzz, document, stack.client.base, known)
    print(f"\nschemathesis sent {tally.sent} requests; statuses {sorted(tally.by_status.items())}")
    assert tally.sent >= REQUESTS_MIN
    assert set(tally.by_operation) == {f"{method.upper()} {path}" for path, item in document["paths"].items()
                                       for method in item}
    assert not [status for status in tally.by_status if status >= 500 and status != 503]
    assert tally.by_status[201] and tally.by_status[200]
