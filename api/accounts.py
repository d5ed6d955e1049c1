"""Handlers of principals, tokens, accounts, balances in the past and statements."""

from __future__ import annotations

import uuid

from aiohttp import web

import schemas
from api import auth
from api.framework import Call, decode_cursor, encode_cursor, json_response
from api.framework import IdPageQuery, PointQuery, decode_id_cursor, encode_id_cursor, parse_time
from api.search import StatementSearchQuery
from api.problems import ApiError
from ledger import principals, store


# ---- principals and accounts ----------------------------------------------------------------


async def create_principal(services, call: Call) -> web.Response:
    body: schemas.PrincipalCreate = call.body
    async with services.pool.connection() as conn:
        principal, token = await principals.create(conn, role=body.role, name=body.name)
    return json_response(schemas.Principal(id=principal.id, role=body.role, name=body.name, token=token), status=201)


async def get_me(services, call: Call) -> web.Response:
    """The caller's own principal: a token learns its role and id without probing routes."""
    principal = call.principal
    return json_response(schemas.Caller(id=principal.id, role=principal.role, name=principal.name))


async def create_token(services, call: Call) -> web.Response:
    async with services.pool.connection() as conn:
        if not await store.principal_exists(conn, call.ids["principal_id"]):
            raise ApiError("not_found", "no such principal")
        row, token = await principals.issue_token(conn, call.ids["principal_id"])
    return json_response(schemas.TokenCreated(id=row.id, token=token, created_at=row.created_at), status=201)


async def list_tokens(services, call: Call) -> web.Response:
    try:
        async with services.pool.connection() as conn:
            rows = await principals.tokens(conn, call.ids["principal_id"])
    except principals.NoSuchPrincipal:
        raise ApiError("not_found", "no such principal") from None
    items = [schemas.TokenInfo(id=r.id, created_at=r.created_at, last_used_at=r.last_used_at, revoked_at=r.revoked_at)
             for r in rows]
    return json_response(schemas.TokenList(items=items))


async def revoke_token(services, call: Call) -> web.Response:
    try:
        async with services.pool.connection() as conn:
            await principals.revoke(conn, call.ids["principal_id"], call.ids["token_id"])
    except principals.NoSuchPrincipal:
        raise ApiError("not_found", "no such token for this principal") from None
    services.auth.forget()  # refused here at once; other processes within their cache time
    return web.Response(status=204)


async def create_account(services, call: Call) -> web.Response:
    body: schemas.AccountCreate = call.body
    wanted = store.AccountRow(body.id or uuid.uuid4(), body.kind, body.currency, body.owner_id, body.name, None)
    async with services.pool.connection() as conn:
        if body.owner_id is not None and not await store.principal_exists(conn, body.owner_id):
            raise ApiError("owner_not_found")
        stored, created = await store.insert_account(conn, wanted)
        if not created and not _same_account(stored, wanted):
            raise ApiError("account_exists")
        answer = await store.account_with_balance(conn, stored.id)
    services.remember_account(stored)
    return json_response(answer, status=201 if created else 200)


def _same_account(a: store.AccountRow, b: store.AccountRow) -> bool:
    return (a.kind, a.currency, a.owner_id) == (b.kind, b.currency, b.owner_id)


async def get_account(services, call: Call) -> web.Response:
    query: PointQuery = call.query
    if query.at_position is not None or query.as_of is not None:
        return await _get_past_account(services, call, query)
    async with services.pool.connection() as conn:
        account = await store.account_with_balance(conn, call.ids["account_id"])
    return json_response(account)


async def _get_past_account(services, call: Call, query: PointQuery) -> web.Response:
    """The balance as it was, from the postings' stored `balance_after`: one index lookup."""
    async with services.pool.connection() as conn:
        if query.at_position is not None:
            past = await store.account_at_position(conn, call.ids["account_id"], query.at_position)
        else:
            past = await store.account_as_of(conn, call.ids["account_id"], parse_time(query.as_of))
    if past.account.position > past.head:
        raise ApiError("position_out_of_range", f"position {past.account.position} is past the journal head {past.head}")
    return json_response(past.account)


async def list_accounts(services, call: Call) -> web.Response:
    """The caller's own accounts (admin and auditor: all), in id order."""
    query: IdPageQuery = call.query
    owner = None if call.principal.role in auth.READ_EVERYTHING else call.principal.id
    async with services.pool.connection() as conn:
        items = await store.accounts_page(conn, owner_id=owner, after=decode_id_cursor(query.after), limit=query.limit)
    next_cursor = encode_id_cursor(items[-1].id) if len(items) == query.limit else None
    return json_response(schemas.AccountPage(items=items, next=next_cursor))


async def get_statement(services, call: Call) -> web.Response:
    """The account's entries from the journal (never stale), one consistent read, with the
    search's filters (`api.search`)."""
    query: StatementSearchQuery = call.query
    async with services.pool.connection() as conn:
        items = await store.statement_search(
            conn, call.ids["account_id"], query.entry_filter(), after=decode_cursor(query.after), limit=query.limit,
            reference=query.reference,
        )
    next_cursor = encode_cursor(items[-1].position) if len(items) == query.limit else None
    return json_response(schemas.StatementPage(items=items, next=next_cursor))
