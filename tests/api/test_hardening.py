"""The security review's findings (issue 11) that the API answers: an export that fails
mid-stream is cut, never answered twice (a problem written into a 200 body)."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp

from tests.plugins.stack import api_with
from tools.seed import seed_journal


async def test_a_journal_export_that_fails_mid_stream_is_cut_not_answered_twice(stack, tmp_path):
    await seed_journal(stack.database_url, entries=3000, accounts=10)
    name = f"export-{uuid.uuid4().hex[:8]}"
    separator = "&" if "?" in stack.database_url else "?"
    async with api_with(stack, database={"url": f"{stack.database_url}{separator}application_name={name}"}) as client:
        async with client.session.get(client.base + "/v1/journal", params={"limit": 10000},
                                      headers={"Authorization": f"Bearer {stack.admin}"}) as response:
            assert response.status == 200
            first = await response.content.readline()
            async with await stack.superuser() as conn:
                await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                   " WHERE application_name = %s", (name,))
            body, cut = first, False
            try:
                async with asyncio.timeout(20):
                    body += await response.content.read()
            except aiohttp.ClientPayloadError:
                cut = True
    lines = body.decode(errors="replace").splitlines()
    assert "problems/" not in body.decode(errors="replace"), "a problem answer was written into the 200 body"
    assert all(line.startswith('{"position"') for line in lines[:-1])
    assert cut or len(lines) == 10000, "the export ended early without cutting the connection"
