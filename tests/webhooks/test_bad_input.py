"""Bad input to the vendor webhook routes: every invalid body, path id or query is its exact 4xx
problem with its place and registers nothing; whose account it is is checked before the URL
(tests/api/test_bad_input.py for the shared shape checks)."""

from __future__ import annotations

import pytest

from tests.plugins.problems import ABSENT, BODY_BYTES_MAX, assert_problem


# ---- vendor webhooks ------------------------------------------------------------------------

WEBHOOK_BODIES = {
    "url missing": ({"event_types": ["transfer.received"]}, "$"),
    "url empty": ({"url": ""}, "$.url"),
    "url not a string": ({"url": 5}, "$.url"),
    "url with a space": ({"url": "https://example.com/a b"}, "$.url"),
    "url with NUL": ({"url": "https://example.com/\u0000"}, "$.url"),
    "url too long": ({"url": "https://example.com/" + "a" * 2048}, "$.url"),
    "event type unknown": ({"url": "https://example.com/", "event_types": ["transfer.sent"]}, "$.event_types[0]"),
    "event types empty": ({"url": "https://example.com/", "event_types": []}, "$.event_types"),
    "event types not a list": ({"url": "https://example.com/", "event_types": "hold.created"}, "$.event_types"),
    "unknown field": ({"url": "https://example.com/", "secret": "whsec_x"}, "$"),
}


@pytest.mark.parametrize("name", list(WEBHOOK_BODIES))
async def test_an_invalid_webhook_body_is_400_and_registers_nothing(stack, payer, name):
    body, error_path = WEBHOOK_BODIES[name]
    path = f"/v1/vendors/{payer.vendor}/webhooks"
    reply = await stack.client.post(path, token=payer.vendor_token, json=body)
    assert_problem(reply, 400, "validation_error", error_path)
    listed = await stack.client.get(path, token=payer.vendor_token)
    assert listed.body["items"] == []


async def test_a_webhook_body_that_is_not_json_is_400(stack, payer):
    reply = await stack.client.post(f"/v1/vendors/{payer.vendor}/webhooks", token=payer.vendor_token, data=b"{url:")
    assert_problem(reply, 400, "invalid_json")


async def test_an_oversized_webhook_body_is_413(stack, payer):
    body = b'{"url":"https://example.com/' + b"a" * BODY_BYTES_MAX + b'"}'
    reply = await stack.client.post(f"/v1/vendors/{payer.vendor}/webhooks", token=payer.vendor_token, data=body)
    assert_problem(reply, 413, "body_too_large")


WEBHOOK_PATHS = {
    "GET /v1/vendors/not-a-uuid/webhooks": "$.path.account_id",
    "POST /v1/vendors/not-a-uuid/webhooks": "$.path.account_id",
    "DELETE /v1/vendors/{vendor}/webhooks/nope": "$.path.webhook_id",
    "GET /v1/vendors/{vendor}/webhooks/nope/deliveries": "$.path.webhook_id",
}


@pytest.mark.parametrize("request_line", list(WEBHOOK_PATHS))
async def test_a_webhook_path_id_that_is_not_a_uuid_is_400(stack, payer, request_line):
    method, path = request_line.split(" ")
    json_body = {"url": "https://example.com/"} if method == "POST" else None
    reply = await stack.client.request(method, path.format(vendor=payer.vendor), token=stack.admin, json=json_body)
    assert_problem(reply, 400, "validation_error", WEBHOOK_PATHS[request_line])


WEBHOOK_QUERIES = {
    "list limit 0": ("/v1/vendors/{vendor}/webhooks", {"limit": "0"}, "$.query.limit"),
    "list cursor not ours": ("/v1/vendors/{vendor}/webhooks", {"after": "bm9wZQ"}, "$.query.after"),
    "list unknown parameter": ("/v1/vendors/{vendor}/webhooks", {"url": "x"}, "$.query"),
    "deliveries limit 1001": ("/v1/vendors/{vendor}/webhooks/{absent}/deliveries", {"limit": "1001"}, "$.query.limit"),
    "deliveries cursor past 2^63-1": ("/v1/vendors/{vendor}/webhooks/{absent}/deliveries", {"after": "gAAAAAAAAAA"},
                                      "$.query.after"),
}


@pytest.mark.parametrize("name", list(WEBHOOK_QUERIES))
async def test_an_invalid_webhook_query_is_400(stack, payer, name):
    path, params, error_path = WEBHOOK_QUERIES[name]
    reply = await stack.client.get(path.format(vendor=payer.vendor, absent=ABSENT), token=stack.admin, params=params)
    assert_problem(reply, 400, "validation_error")
    assert reply.body["errors"][0]["path"].startswith(error_path), reply.text


async def test_an_auditor_with_a_bad_webhook_body_is_400_shape_before_role(stack, payer):
    _, auditor = await stack.principal("auditor")
    reply = await stack.client.post(f"/v1/vendors/{payer.vendor}/webhooks", token=auditor, json={"url": 5})
    assert_problem(reply, 400, "validation_error", "$.url")
    good = await stack.client.post(f"/v1/vendors/{payer.vendor}/webhooks", token=auditor,
                                   json={"url": "https://example.com/"})
    assert_problem(good, 403, "forbidden")


async def test_a_vendor_registering_at_someone_elses_account_is_403_before_the_url_check(stack, payer):
    other = await stack.vendor()
    reply = await stack.client.post(f"/v1/vendors/{other.account_id}/webhooks", token=payer.vendor_token,
                                    json={"url": "ftp://not-allowed/"})
    assert_problem(reply, 403, "forbidden")  # not 422: whose account it is comes first, and says nothing of URLs
