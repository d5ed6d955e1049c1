"""The OpenAPI 3.1 document, generated from the route declarations and the msgspec schemas.

It is never written by hand. Each operation lists exactly the statuses its route can answer;
each problem status names, as an enum on `code`, exactly the codes that route can answer with it.
"""

from __future__ import annotations

from typing import Any

import msgspec

import schemas
from api.framework import IDEMPOTENCY_KEY, Header, Route
from api.problems import CODES, RETRY_AFTER_S

REF = "#/components/schemas/{name}"
PROBLEM = "application/problem+json"
RETRY_AFTER = "Retry-After"


def _problem_statuses(route: Route) -> dict[int, list[str]]:
    """status -> the problem codes this route answers with it."""
    statuses: dict[int, list[str]] = {}
    for code in sorted(route.problem_codes):
        statuses.setdefault(CODES[code][0], []).append(code)
    return statuses


def _parameters(route: Route) -> list[dict]:
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
        for name in route.path_ids
    ]
    query_schema = msgspec.json.schema(route.query)
    query_def = query_schema.get("$defs", {}).get(route.query.__name__, {})
    gathered = getattr(route.query, "PREFIXED", None)  # a family of parameters, described on the operation
    for name, prop in query_def.get("properties", {}).items():
        if name == gathered:
            continue
        params.append({"name": name, "in": "query", "required": name in query_def.get("required", ()), "schema": prop})
    if route.idempotency:
        params.append({
            "name": IDEMPOTENCY_KEY, "in": "header", "required": True,
            "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x20-\\x7e]+$"},
        })
    return params


def _answer(route: Route, status: int, ref_of: dict) -> dict:
    if route.answers[status] is None:
        return {"description": "No content"}
    description = "OK" if status < 300 else "Not ready"
    return {"description": description, "content": {route.media: {"schema": ref_of[route.answers[status]]}}}


def _problem(status: int, codes: list[str], ref_of: dict) -> dict:
    schema = {"allOf": [
        ref_of[schemas.Problem],
        {"properties": {"status": {"const": status}, "code": {"enum": codes}}},
    ]}
    return {"description": "Problem: " + ", ".join(codes), "content": {PROBLEM: {"schema": schema}}}


def _header(header: Header, status: int) -> dict:
    return {"description": header.description, "required": header.on[status], "schema": dict(header.schema)}


def _headers(route: Route, status: int, codes: list[str]) -> dict[str, dict]:
    """The response headers the API sets on this route's answers with this status."""
    headers = {h.name: _header(h, status) for h in route.headers if status in h.on}
    if codes and any(code in RETRY_AFTER_S for code in codes):
        retry = Header(RETRY_AFTER, "Seconds to wait before retrying.", on={status: all(c in RETRY_AFTER_S for c in codes)})
        headers[RETRY_AFTER] = _header(retry, status)
    return headers


def _operation(route: Route, ref_of: dict) -> dict:
    operation: dict[str, Any] = {"operationId": route.name, "summary": route.summary, "responses": {}}
    if getattr(route.query, "PREFIXED_DOC", None):
        operation["description"] = route.query.PREFIXED_DOC
    if not route.public:
        operation["security"] = [{"bearer": []}]
    params = _parameters(route)
    if params:
        operation["parameters"] = params
    if route.body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref_of[route.body]}}}
    problems = _problem_statuses(route)
    for status in sorted(route.answers.keys() | problems.keys()):
        codes = problems.get(status, [])
        response = _problem(status, codes, ref_of) if codes else _answer(route, status, ref_of)
        headers = _headers(route, status, codes)
        if headers:
            response["headers"] = headers
        operation["responses"][str(status)] = response
    return operation


def _components(routes: list[Route]) -> tuple[dict, dict]:
    types = [r.body for r in routes if r.body] + [t for r in routes for t in r.answers.values() if t] + [schemas.Problem]
    types = list(dict.fromkeys(types))
    refs, components = msgspec.json.schema_components(types, ref_template=REF)
    for kind in types:
        # Rules across fields, which msgspec's schema cannot say (checked in the type's __post_init__).
        extra = getattr(kind, "json_schema_extra", None)
        if extra:
            components[kind.__name__].update(extra)
    return dict(zip(types, refs)), components


def document(routes: list[Route], *, metrics: bool = True) -> dict:
    """`metrics`: whether `/metrics` is served on the API listener (no separate one configured)."""
    ref_of, components = _components(routes)
    paths: dict[str, dict] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, ref_of)
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
