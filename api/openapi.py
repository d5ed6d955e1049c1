"""The OpenAPI 3.1 document, generated from the routes and the msgspec schemas (never by hand)."""

from __future__ import annotations

import msgspec

import schemas
from api.problems import CODES
from api.routes import PROJECTION_POSITION

REF = "#/components/schemas/{name}"


def _statuses(route) -> list[int]:
    statuses = {200 if route.status == 200 else route.status}
    if route.name == "create_account":
        statuses |= {200, 201, 409, 422}
    if not route.public:
        statuses |= {400, 401, 403, 429, 503}
    if route.path_ids:
        statuses.add(404)
    if route.body is not None:
        statuses |= {413}
    if route.name == "create_transfer":
        statuses |= {409, 422}
    if route.name in ("get_verification", "list_verifications"):
        statuses.add(404)
    if route.name == "readyz":
        statuses.add(503)
    return sorted(statuses)


def _parameters(route) -> list[dict]:
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
        for name in route.path_ids
    ]
    query_schema = msgspec.json.schema(route.query)
    for name, prop in query_schema.get("$defs", {}).get(route.query.__name__, {}).get("properties", {}).items():
        params.append({"name": name, "in": "query", "required": False, "schema": prop})
    if route.idempotency:
        params.append({
            "name": "Idempotency-Key", "in": "header", "required": True,
            "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]+$"},
        })
    return params


def _response(route, status: int, ref_of: dict) -> dict:
    """One documented answer: the route's own shape below 300 (and a not-ready /readyz, which
    answers its Health body), a problem otherwise; with the headers the API sets on it."""
    headers = _headers(route, status)
    if status < 300 or (route.name == "readyz" and status == 503):
        media = "application/x-ndjson" if route.name == "get_journal" else "application/json"
        answer = {"description": "OK" if status < 300 else "Not ready", "content": {media: {"schema": ref_of[route.answer]}}}
    else:
        codes = sorted(code for code, (s, _) in CODES.items() if s == status)
        answer = {
            "description": "Problem: " + ", ".join(codes),
            "content": {"application/problem+json": {"schema": ref_of[schemas.Problem]}},
        }
    if headers:
        answer["headers"] = headers
    return answer


def _header(description: str, *, required: bool) -> dict:
    return {"description": description, "required": required, "schema": {"type": "string", "pattern": "^[0-9]+$"}}


def _headers(route, status: int) -> dict[str, dict]:
    """The response headers the API sets on this route's answers with this status."""
    headers: dict[str, dict] = {}
    if not route.public and status in (429, 503):
        headers["Retry-After"] = _header("Seconds to wait before retrying.", required=True)
    if route.name in ("get_verification", "list_verifications") and status in (200, 404):
        # A 404 about the vendor account itself is answered before the projection is read.
        position = "Every journal entry with position <= N is in the projection."
        headers[PROJECTION_POSITION] = _header(position, required=status == 200)
    if route.name == "create_transfer" and status == 201:
        headers["Idempotency-Replayed"] = {
            "description": "`true` when the answer is a replay of an earlier request with this key.",
            "required": False, "schema": {"type": "string", "enum": ["true"]},
        }
    return headers


def document(routes, *, metrics: bool = True) -> dict:
    """`metrics`: whether `/metrics` is served on the API listener (no separate one configured)."""
    types = [r.body for r in routes if r.body] + [r.answer for r in routes if r.answer] + [schemas.Problem]
    (refs, components) = msgspec.json.schema_components(types, ref_template=REF)
    ref_of = dict(zip(types, refs))
    paths: dict[str, dict] = {}
    for route in routes:
        operation: dict = {"operationId": route.name, "summary": route.summary, "responses": {}}
        if not route.public:
            operation["security"] = [{"bearer": []}]
        params = _parameters(route)
        if params:
            operation["parameters"] = params
        if route.body is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref_of[route.body]}}}
        for status in _statuses(route):
            operation["responses"][str(status)] = _response(route, status, ref_of)
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    paths["/openapi.json"] = {"get": {"operationId": "openapi", "summary": "This document.",
                                      "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}}}}
    if metrics:
        paths["/metrics"] = {"get": {"operationId": "metrics", "summary": "Prometheus metrics.",
                                     "responses": {"200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Wallet ledger", "version": "1.0.0",
                 "description": "Event-sourced double-entry wallet ledger. Errors are RFC 9457 problems with a stable `code`."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
