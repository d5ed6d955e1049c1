"""Bad input, as the contract states it: every case gets its exact 4xx and code as an RFC 9457
problem, never a 5xx, and writes nothing (the payer's balance and the journal head are the same
after it). Validation errors name the offending place in `errors[].path`.

Shape limits are also probed from the allowed side: a value exactly at a limit passes the shape
checks and reaches the business rules, where an amount above the wallet's balance is refused with
422 `insufficient_funds`, so the boundary is shown without moving money.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from tests.plugins.problems import (ABSENT, AMOUNT_MAX, BALANCE, BODY_BYTES_MAX, NothingWritten, Payer, assert_problem,
                                    good, post_transfer, raw)

TOO_MUCH = BALANCE + 1  # passes every shape check, then fails the business rules (422)


# ---- malformed JSON -------------------------------------------------------------------------

MALFORMED = {
    "open brace": b"{",
    "empty body": b"",
    "not JSON at all": b"amount=5",
    "trailing garbage": b'{"from_account_id": "%(u)s", "to_account_id": "%(u)s", "amount": 5, "currency": "USD"} x',
    "two documents": b'{"from_account_id": "%(u)s", "to_account_id": "%(u)s", "amount": 5, "currency": "USD"} {}',
    "non-UTF-8 byte": b"\xff\xfe{}",
    "non-UTF-8 inside a string": b'{"reference": "\xff"}',
    "lone high surrogate": b'{"reference": "\\ud800"}',
    "lone low surrogate": b'{"reference": "a\\udc00b"}',
    "surrogate in a metadata key": b'{"metadata": {"\\ud83d": "x"}}',
}


@pytest.mark.parametrize("name", list(MALFORMED))
async def test_malformed_json_is_400_invalid_json(stack, payer, name):
    async with NothingWritten(stack, payer):
        body = MALFORMED[name].replace(b"%(u)s", payer.wallet.encode())
        reply = await post_transfer(stack, payer, data=body, headers={"Content-Type": "application/json"})
    assert_problem(reply, 400, "invalid_json")


@pytest.mark.parametrize("document", ["[]", "null", "5", '"transfer"', "true"])
async def test_json_that_is_not_an_object_is_400_at_the_root(stack, payer, document):
    async with NothingWritten(stack, payer):
        reply = await post_transfer(stack, payer, data=document.encode())
    assert_problem(reply, 400, "validation_error", "$")


async def test_a_good_body_wrapped_in_an_array_is_400(stack, payer):
    async with NothingWritten(stack, payer):
        reply = await post_transfer(stack, payer, json=[good(payer)])
    assert_problem(reply, 400, "validation_error", "$")


# ---- types, ranges and formats --------------------------------------------------------------

# name -> (changes to a good body, the path of the error)
INVALID_FIELDS: dict[str, tuple[dict, str]] = {
    "amount as a string": ({"amount": "5"}, "$.amount"),
    "amount as a float": ({"amount": 1.5}, "$.amount"),
    "amount as a bool": ({"amount": True}, "$.amount"),
    "amount null": ({"amount": None}, "$.amount"),
    "amount zero": ({"amount": 0}, "$.amount"),
    "amount negative": ({"amount": -1}, "$.amount"),
    "amount 2^53": ({"amount": 2**53}, "$.amount"),
    "amount 2^64": ({"amount": 2**64}, "$.amount"),
    "amount 10^40": ({"amount": 10**40}, "$.amount"),
    "currency lower case": ({"currency": "usd"}, "$.currency"),
    "currency two letters": ({"currency": "US"}, "$.currency"),
    "currency four letters": ({"currency": "USDD"}, "$.currency"),
    "currency empty": ({"currency": ""}, "$.currency"),
    "currency with a final newline": ({"currency": "USD\n"}, "$.currency"),
    "currency non-ASCII": ({"currency": "ÜSD"}, "$.currency"),
    "currency as a number": ({"currency": 840}, "$.currency"),
    "source not a UUID": ({"from_account_id": "not-a-uuid"}, "$.from_account_id"),
    "target empty": ({"to_account_id": ""}, "$.to_account_id"),
    "source a number": ({"from_account_id": 42}, "$.from_account_id"),
    "source with a bad hex digit": ({"from_account_id": "00000000-0000-0000-0000-00000000000g"}, "$.from_account_id"),
    "reference 129 characters": ({"reference": "r" * 129}, "$.reference"),
    "reference a number": ({"reference": 7}, "$.reference"),
    "metadata a list": ({"metadata": ["a"]}, "$.metadata"),
    "metadata 17 keys": ({"metadata": {f"k{i}": "v" for i in range(17)}}, "$.metadata"),
    "metadata key of 65 characters": ({"metadata": {"k" * 65: "v"}}, "$.metadata"),
    "metadata empty key": ({"metadata": {"": "v"}}, "$.metadata"),
    "metadata value of 257 characters": ({"metadata": {"k": "v" * 257}}, "$.metadata[...]"),
    "metadata value a number": ({"metadata": {"k": 1}}, "$.metadata[...]"),
    "metadata value null": ({"metadata": {"k": None}}, "$.metadata[...]"),
    "metadata value an object": ({"metadata": {"k": {"nested": "v"}}}, "$.metadata[...]"),
    "NUL in reference": ({"reference": "inv\u0000oice"}, "$.reference"),
    "NUL at the start of reference": ({"reference": "\u0000"}, "$.reference"),
    "NUL in a metadata key": ({"metadata": {"or\u0000der": "7"}}, "$.metadata"),
    "NUL in a metadata value": ({"metadata": {"order": "7\u0000"}}, "$.metadata[...]"),
    "NUL in currency": ({"currency": "US\u0000"}, "$.currency"),
    "NUL in an account id": ({"from_account_id": str(uuid.UUID(int=1))[:-1] + "\u0000"}, "$.from_account_id"),
}


@pytest.mark.parametrize("name", list(INVALID_FIELDS))
async def test_invalid_field_is_400_with_its_path(stack, payer, name):
    changes, path = INVALID_FIELDS[name]
    async with NothingWritten(stack, payer):
        reply = await post_transfer(stack, payer, json=good(payer, **changes))
    assert_problem(reply, 400, "validation_error", path)


@pytest.mark.parametrize("literal", [b"1001.0", b"1.001e3", b"100100e-2"])
async def test_amount_written_as_an_integral_number_passes_the_shape_checks(stack, payer, literal):
    """JSON Schema (and so the OpenAPI document) calls 1001.0 an integer; so does the API. It
    reaches the business rules as the integer 1001, one more than the wallet holds."""
    body = raw(payer, amount=123456789).replace(b"123456789", literal)
    async with NothingWritten(stack, payer):
        reply = await post_transfer(stack, payer, data=body)
    assert_problem(reply, 422, "insufficient_funds")


@pytest.mark.parametrize("literal", [b"1.5", b"1e-1", b"1000.5"])
async def test_amount_with_a_fraction_is_400(stack, payer, literal):
    body = raw(payer, amount=123456789).replace(b"123456789", literal)
    async with NothingWritten(stack, payer):
        reply = await post_transfer(stack, payer, data=body)
    assert_problem(reply, 400, "validation_error", "$.amount")


@pytest.mark.parametrize("field", ["from_account_id", "to_account_id", "amount", "currency"])
async def test_missing_required_field_is_400(stack, payer, field):
    body = good(payer)
    del body[field]
    async with NothingWritten(stack, payer):
        reply = await post_transfer(stack, payer, json=body)
    assert_problem(reply, 400, "validation_error", "$")
    assert field in reply.body["errors"][0]["message"]


async def test_unknown_top_level_field_is_400(stack, payer):
    async with NothingWritten(stack, payer):
        reply = await post_transfer(stack, payer, json=good(payer, memo="hi"))
    assert_problem(reply, 400, "validation_error", "$")
    assert "memo" in reply.body["errors"][0]["message"]


# name -> changes that sit exactly on a limit, with an amount the wallet cannot afford
AT_THE_LIMIT: dict[str, dict] = {
    "amount 2^53-1": {"amount": AMOUNT_MAX},
    "reference 128 characters": {"reference": "r" * 128, "amount": TOO_MUCH},
    "metadata 16 keys": {"metadata": {f"k{i}": "v" for i in range(16)}, "amount": TOO_MUCH},
    "metadata key of 64 characters": {"metadata": {"k" * 64: "v"}, "amount": TOO_MUCH},
    "metadata value of 256 characters": {"metadata": {"k": "v" * 256}, "amount": TOO_MUCH},
    "metadata with arbitrary string keys": {"metadata": {"{\"a\": 1}": "", "é ✓": "ok"}, "amount": TOO_MUCH},
    "non-ASCII reference": {"reference": "Zahlung für Bestellung ✓ 🎉", "amount": TOO_MUCH},
}


@pytest.mark.parametrize("name", list(AT_THE_LIMIT))
async def test_value_at_the_limit_passes_the_shape_checks(stack, payer, name):
    async with NothingWritten(stack, payer):
        reply = await post_transfer(stack, payer, json=good(payer, **AT_THE_LIMIT[name]))
    assert_problem(reply, 422, "insufficient_funds")


# ---- body size ------------------------------------------------------------------------------


def _padded(payer: Payer, size: int) -> bytes:
    body = raw(payer, amount=TOO_MUCH)
    return body[:-1] + b" " * (size - len(body)) + b"}"


async def test_body_of_exactly_64_KiB_is_accepted(stack, payer):
    async with NothingWritten(stack, payer):
        reply = await post_transfer(stack, payer, data=_padded(payer, BODY_BYTES_MAX))
    assert_problem(reply, 422, "insufficient_funds")


async def test_body_over_64_KiB_with_content_length_is_413(stack, payer):
    async with NothingWritten(stack, payer):
        reply = await post_transfer(stack, payer, data=_padded(payer, BODY_BYTES_MAX + 1))
    assert_problem(reply, 413, "body_too_large")


async def test_body_over_64_KiB_chunked_is_413(stack, payer):
    body = _padded(payer, 4 * BODY_BYTES_MAX)

    async def chunks():
        for start in range(0, len(body), 8192):
            yield body[start:start + 8192]

    async with NothingWritten(stack, payer):
        reply = await post_transfer(stack, payer, data=chunks())
    assert_problem(reply, 413, "body_too_large")


async def test_oversized_body_to_an_admin_route_is_413(stack, payer):
    body = json.dumps({"role": "client", "name": "n" * (BODY_BYTES_MAX + 10)}).encode()
    reply = await stack.client.post("/v1/principals", token=stack.admin, data=body)
    assert_problem(reply, 413, "body_too_large")


# ---- Idempotency-Key ------------------------------------------------------------------------


async def test_missing_idempotency_key_is_400_idempotency_key_required(stack, payer):
    async with NothingWritten(stack, payer):
        reply = await post_transfer(stack, payer, key=None, json=good(payer))
    assert_problem(reply, 400, "idempotency_key_required")


@pytest.mark.parametrize("key", ["", "k" * 256, "clé", "tab\there", "ключ"], ids=["empty", "256 chars", "non-ASCII",
                                                                                  "tab", "cyrillic"])
async def test_invalid_idempotency_key_is_400(stack, payer, key):
    async with NothingWritten(stack, payer):
        reply = await post_transfer(stack, payer, key=key, json=good(payer))
    assert_problem(reply, 400, "invalid_idempotency_key")


@pytest.mark.parametrize("key", ["k" * 255, " ", "~!@#$%^&*()_+{}|:<>?"], ids=["255 chars", "space", "punctuation"])
async def test_idempotency_key_at_the_limits_is_accepted(stack, payer, key):
    async with NothingWritten(stack, payer):
        reply = await post_transfer(stack, payer, key=key + str(uuid.uuid4())[: 255 - len(key)],
                                    json=good(payer, amount=TOO_MUCH))
    assert_problem(reply, 422, "insufficient_funds")


@pytest.mark.parametrize("control", [b"\x00", b"\x01", b"\x7f"], ids=["NUL", "SOH", "DEL"])
async def test_control_character_in_a_header_is_400_before_the_application(stack, payer, control):
    """aiohttp's HTTP parser refuses control characters in a header value (RFC 9110 5.5) before
    any handler runs, so this 400 is plain text, not a problem; nothing is written either way."""
    body = raw(payer)
    request = (
        b"POST /v1/transfers HTTP/1.1\r\nHost: ledger\r\nConnection: close\r\n"
        b"Authorization: Bearer " + payer.token.encode() + b"\r\n"
        b"Idempotency-Key: a" + control + b"b\r\n"
        b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    async with NothingWritten(stack, payer):
        reader, writer = await asyncio.open_connection(stack.settings.http.host, stack.settings.http.port)
        writer.write(request)
        answer = await asyncio.wait_for(reader.read(), timeout=5)
        writer.close()
    assert answer.split(b"\r\n", 1)[0].split(b" ", 2)[1] == b"400"


# ---- ids in the path and the query ----------------------------------------------------------

BAD_PATHS = {
    "/v1/accounts/not-a-uuid": "$.path.account_id",
    "/v1/accounts/123": "$.path.account_id",
    "/v1/accounts/%00": "$.path.account_id",
    "/v1/transfers/not-a-uuid": "$.path.transfer_id",
    "/v1/vendors/not-a-uuid/transfers": "$.path.account_id",
    f"/v1/vendors/{ABSENT}/transfers/xyz/verification": "$.path.transfer_id",
    "/v1/accounts/not-a-uuid/entries": "$.path.account_id",
}


@pytest.mark.parametrize("path", list(BAD_PATHS))
async def test_a_path_id_that_is_not_a_uuid_is_400(stack, path):
    reply = await stack.client.get(path, token=stack.admin)
    assert_problem(reply, 400, "validation_error", BAD_PATHS[path])


BAD_QUERIES = {
    "journal limit 0": ("/v1/journal", {"limit": "0"}, "$.query.limit"),
    "journal limit 10001": ("/v1/journal", {"limit": "10001"}, "$.query.limit"),
    "journal limit not a number": ("/v1/journal", {"limit": "ten"}, "$.query.limit"),
    "journal after negative": ("/v1/journal", {"after": "-1"}, "$.query.after"),
    "journal unknown parameter": ("/v1/journal", {"from": "1"}, "$.query"),
    "page limit 1001": ("/v1/vendors/{vendor}/transfers", {"limit": "1001"}, "$.query.limit"),
    "page cursor not ours": ("/v1/vendors/{vendor}/transfers", {"after": "bm9wZQ"}, "$.query.after"),
    "page cursor with NUL": ("/v1/vendors/{vendor}/transfers", {"after": "\u0000"}, "$.query.after"),
    "page cursor of the old form": ("/v1/vendors/{vendor}/transfers", {"after": "cDo1"}, "$.query.after"),
    "page cursor past 2^63-1": ("/v1/vendors/{vendor}/transfers", {"after": "gAAAAAAAAAA"}, "$.query.after"),
    "page cursor with unused bits set": ("/v1/vendors/{vendor}/transfers", {"after": "AAAAAAAAAAB"}, "$.query.after"),
    "page cursor a newline": ("/v1/vendors/{vendor}/transfers", {"after": "\n"}, "$.query.after"),
    "page cursor with a final newline": ("/v1/vendors/{vendor}/transfers", {"after": "AAAAAAAAAAA\n"},
                                         "$.query.after"),
    "wait_ms over 10000": ("/v1/vendors/{vendor}/transfers/{absent}/verification", {"wait_ms": "10001"},
                           "$.query.wait_ms"),
    "min_position negative": ("/v1/vendors/{vendor}/transfers/{absent}/verification", {"min_position": "-1"},
                              "$.query.min_position"),
    # v2: account lists, statements, balances at a point
    "accounts limit 0": ("/v1/accounts", {"limit": "0"}, "$.query.limit"),
    "accounts limit 1001": ("/v1/accounts", {"limit": "1001"}, "$.query.limit"),
    "accounts cursor of a position list": ("/v1/accounts", {"after": "AAAAAAAAAAA"}, "$.query.after"),
    "accounts cursor with unused bits set": ("/v1/accounts", {"after": "A" * 21 + "B"}, "$.query.after"),
    "accounts unknown parameter": ("/v1/accounts", {"owner": "x"}, "$.query"),
    "statement limit 0": ("/v1/accounts/{vendor}/entries", {"limit": "0"}, "$.query.limit"),
    "statement cursor not ours": ("/v1/accounts/{vendor}/entries", {"after": "bm9wZQ"}, "$.query.after"),
    "statement reference too long": ("/v1/accounts/{vendor}/entries", {"reference": "r" * 129}, "$.query.reference"),
    "statement reference with NUL": ("/v1/accounts/{vendor}/entries", {"reference": "a\u0000"},
                                     "$.query.reference"),
    "at_position negative": ("/v1/accounts/{vendor}", {"at_position": "-1"}, "$.query.at_position"),
    "at_position past 2^63-1": ("/v1/accounts/{vendor}", {"at_position": str(2**63)}, "$.query.at_position"),
    "at_position not a number": ("/v1/accounts/{vendor}", {"at_position": "head"}, "$.query.at_position"),
    "as_of not a time": ("/v1/accounts/{vendor}", {"as_of": "yesterday"}, "$.query.as_of"),
    "as_of without a zone": ("/v1/accounts/{vendor}", {"as_of": "2026-01-01T00:00:00"}, "$.query.as_of"),
    "as_of a date": ("/v1/accounts/{vendor}", {"as_of": "2026-01-01"}, "$.query.as_of"),
    "at_position and as_of": ("/v1/accounts/{vendor}", {"at_position": "1", "as_of": "2026-01-01T00:00:00Z"},
                              "$.query.as_of"),
    # v3: searching entries by metadata
    "search fifth metadata filter": ("/v1/accounts/{vendor}/entries", {f"metadata.k{n}": "v" for n in range(5)},
                                     "$.query.metadata"),
    "search metadata key over 64": ("/v1/vendors/{vendor}/transfers", {"metadata." + "k" * 65: "v"},
                                    "$.query.metadata." + "k" * 64),
    "search metadata key empty": ("/v1/transfers", {"metadata.": "v"}, "$.query.metadata"),
    "search metadata value over 256": ("/v1/transfers", {"metadata.order": "v" * 257}, "$.query.metadata.order"),
    "search metadata value with NUL": ("/v1/transfers", {"metadata.order": "a\u0000"}, "$.query.metadata.order"),
    "search bare metadata": ("/v1/transfers", {"metadata": "order"}, "$.query.metadata"),
    "search from not a time": ("/v1/transfers", {"from": "yesterday"}, "$.query.from"),
    "search to not a real time": ("/v1/accounts/{vendor}/entries", {"to": "2026-02-30T00:00:00Z"}, "$.query.to"),
    "search from without a zone": ("/v1/vendors/{vendor}/transfers", {"from": "2026-01-01T00:00:00"}, "$.query.from"),
    "search unknown kind": ("/v1/vendors/{vendor}/transfers", {"kind": "gift"}, "$.query.kind"),
    "search account_id not a UUID": ("/v1/transfers", {"account_id": "wallet"}, "$.query.account_id"),
}


@pytest.mark.parametrize("name", list(BAD_QUERIES))
async def test_an_invalid_query_parameter_is_400(stack, payer, name):
    path, params, error_path = BAD_QUERIES[name]
    reply = await stack.client.get(path.format(vendor=payer.vendor, absent=ABSENT), token=stack.admin, params=params)
    assert_problem(reply, 400, "validation_error")
    assert reply.body["errors"][0]["path"].startswith(error_path), reply.text


async def test_a_repeated_query_parameter_is_400(stack):
    reply = await stack.client.get("/v1/journal?limit=1&limit=2", token=stack.admin)
    assert_problem(reply, 400, "validation_error")


# ---- the admin routes' bodies ---------------------------------------------------------------

ADMIN_BODIES = {
    "principal role unknown": ("/v1/principals", {"role": "root", "name": "x"}, "$.role"),
    "principal name empty": ("/v1/principals", {"role": "client", "name": ""}, "$.name"),
    "principal name with NUL": ("/v1/principals", {"role": "client", "name": "a\u0000"}, "$.name"),
    "principal unknown field": ("/v1/principals", {"role": "client", "name": "x", "admin": True}, "$"),
    "account kind unknown": ("/v1/accounts", {"kind": "savings", "currency": "USD"}, "$.kind"),
    "account currency lower case": ("/v1/accounts", {"kind": "wallet", "currency": "usd"}, "$.currency"),
    "account id not a UUID": ("/v1/accounts", {"id": "nope", "kind": "wallet", "currency": "USD"}, "$.id"),
    "account owner not a UUID": ("/v1/accounts", {"kind": "wallet", "currency": "USD", "owner_id": 5}, "$.owner_id"),
    "account name with NUL": ("/v1/accounts", {"kind": "wallet", "currency": "USD", "name": "\u0000"}, "$.name"),
    "system account with an owner": ("/v1/accounts", {"kind": "system", "currency": "USD", "owner_id": ABSENT},
                                     "$.owner_id"),
}


@pytest.mark.parametrize("name", list(ADMIN_BODIES))
async def test_invalid_admin_body_is_400_and_creates_nothing(stack, name):
    path, body, error_path = ADMIN_BODIES[name]
    chosen_id = str(uuid.uuid4())
    if path == "/v1/accounts" and "id" not in body:
        body = {**body, "id": chosen_id}
    reply = await stack.client.post(path, token=stack.admin, json=body)
    assert_problem(reply, 400, "validation_error", error_path)
    if path == "/v1/accounts" and "id" not in ADMIN_BODIES[name][1]:
        assert_problem(await stack.client.get(f"/v1/accounts/{chosen_id}", token=stack.admin), 404, "not_found")


# ---- routes, methods and tokens -------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/v1", "/v1/transfer", "/v2/transfers", "/v1/accounts/", "/openapi.yaml"])
async def test_unknown_route_is_a_404_problem(stack, path):
    assert_problem(await stack.client.get(path, token=stack.admin), 404, "not_found")
    assert_problem(await stack.client.get(path), 404, "not_found")


@pytest.mark.parametrize("method, path, allowed", [
    ("DELETE", "/v1/transfers", "GET, POST"), ("PUT", "/v1/transfers", "GET, POST"), ("TRACE", "/v1/transfers", "GET, POST"),
    ("GET", "/v1/batches", "POST"),
    ("DELETE", f"/v1/accounts/{ABSENT}", "GET"), ("POST", "/v1/journal", "GET"), ("PATCH", "/v1/principals", "POST"),
    ("POST", "/healthz", "GET"),
])
async def test_wrong_method_is_a_405_problem_that_says_what_is_allowed(stack, method, path, allowed):
    reply = await stack.client.request(method, path, token=stack.admin)
    assert_problem(reply, 405, "method_not_allowed")
    assert reply.headers["Allow"] == allowed


BAD_AUTHORIZATION = {
    "missing": None,
    "empty": "",
    "scheme only": "Bearer",
    "scheme and space": "Bearer ",
    "basic scheme": "Basic dXNlcjpwYXNz",
    "unknown token": "Bearer lt_" + "x" * 43,
    "token too long": "Bearer lt_" + "x" * 300,
    "token with a space": "Bearer lt_abc def",
    "two spaces": "Bearer  lt_abc",
    "non-ASCII token": "Bearer lt_clé",
}


@pytest.mark.parametrize("name", list(BAD_AUTHORIZATION))
async def test_missing_malformed_or_unknown_token_is_401(stack, payer, name):
    value = BAD_AUTHORIZATION[name]
    headers = {} if value is None else {"Authorization": value}
    async with NothingWritten(stack, payer):
        reply = await stack.client.post("/v1/transfers", json=good(payer), key=str(uuid.uuid4()), headers=headers)
    assert_problem(reply, 401, "unauthenticated")
    read = await stack.client.get(f"/v1/accounts/{payer.wallet}", headers=headers)
    assert_problem(read, 401, "unauthenticated")


# ---- the order of checks --------------------------------------------------------------------

UNKNOWN_TOKEN = "lt_" + "u" * 43


async def test_bad_token_with_bad_body_is_401(stack, payer):
    reply = await post_transfer(stack, payer, token=UNKNOWN_TOKEN, data=b"{")
    assert_problem(reply, 401, "unauthenticated")


async def test_bad_token_without_idempotency_key_is_401(stack, payer):
    reply = await post_transfer(stack, payer, token=UNKNOWN_TOKEN, key=None, json=good(payer))
    assert_problem(reply, 401, "unauthenticated")


async def test_bad_token_with_oversized_body_is_401(stack, payer):
    reply = await post_transfer(stack, payer, token=UNKNOWN_TOKEN, data=_padded(payer, BODY_BYTES_MAX + 1))
    assert_problem(reply, 401, "unauthenticated")


async def test_bad_token_with_bad_path_id_is_401(stack):
    assert_problem(await stack.client.get("/v1/accounts/not-a-uuid", token=UNKNOWN_TOKEN), 401, "unauthenticated")


async def test_vendor_with_bad_body_is_400_shape_before_role(stack, payer):
    async with NothingWritten(stack, payer):
        reply = await post_transfer(stack, payer, token=payer.vendor_token, json=good(payer, amount=0))
    assert_problem(reply, 400, "validation_error", "$.amount")


async def test_vendor_without_idempotency_key_is_400_shape_before_role(stack, payer):
    reply = await post_transfer(stack, payer, token=payer.vendor_token, key=None, json=good(payer))
    assert_problem(reply, 400, "idempotency_key_required")


async def test_vendor_with_oversized_body_is_413_shape_before_role(stack, payer):
    reply = await post_transfer(stack, payer, token=payer.vendor_token, data=_padded(payer, BODY_BYTES_MAX + 1))
    assert_problem(reply, 413, "body_too_large")


async def test_vendor_with_good_body_is_403(stack, payer):
    async with NothingWritten(stack, payer):
        reply = await post_transfer(stack, payer, token=payer.vendor_token, json=good(payer))
    assert_problem(reply, 403, "forbidden")


async def test_client_with_bad_query_on_the_journal_is_400_shape_before_role(stack, payer):
    reply = await stack.client.get("/v1/journal", token=payer.token, params={"limit": "0"})
    assert_problem(reply, 400, "validation_error", "$.query.limit")
    assert_problem(await stack.client.get("/v1/journal", token=payer.token), 403, "forbidden")


async def test_client_creating_a_system_account_with_an_owner_is_400_shape_before_role(stack, payer):
    body = {"kind": "system", "currency": "USD", "owner_id": ABSENT}
    assert_problem(await stack.client.post("/v1/accounts", token=payer.token, json=body), 400, "validation_error",
                   "$.owner_id")


async def test_vendor_with_bad_path_id_is_400_shape_before_role(stack, payer):
    reply = await stack.client.get("/v1/accounts/not-a-uuid", token=payer.vendor_token)
    assert_problem(reply, 400, "validation_error", "$.path.account_id")


@pytest.mark.parametrize("rule", ["insufficient_funds", "same_account", "currency_mismatch", "account_not_found"])
async def test_client_on_someone_elses_wallet_is_403_before_business_rules(stack, payer, rule):
    mine = await stack.funded_wallet(10)
    body = {
        "insufficient_funds": good(payer, amount=TOO_MUCH),
        "same_account": good(payer, to_account_id=payer.wallet),
        "currency_mismatch": good(payer, currency="EUR"),
        "account_not_found": good(payer, to_account_id=ABSENT),
    }[rule]
    async with NothingWritten(stack, payer):
        reply = await post_transfer(stack, payer, token=mine.token, json=body)
    assert_problem(reply, 403, "forbidden")


async def test_client_on_an_absent_source_account_is_403_not_422(stack, payer):
    async with NothingWritten(stack, payer):
        reply = await post_transfer(stack, payer, json=good(payer, from_account_id=ABSENT))
    assert_problem(reply, 403, "forbidden")


async def test_a_bad_request_does_not_use_up_its_key(stack, payer):
    key = str(uuid.uuid4())
    async with NothingWritten(stack, payer):
        assert_problem(await post_transfer(stack, payer, key=key, json=good(payer, amount=0)), 400, "validation_error")
        again = await post_transfer(stack, payer, key=key, json=good(payer, amount=TOO_MUCH))
    assert_problem(again, 422, "insufficient_funds")
