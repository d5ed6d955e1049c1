"""The console on the session's stack: the console's pages on a listener of their own, calling the
stack's API over HTTP as the console inside `ledger api` calls its own (`tests/ops` runs `ledger dev`,
where `cli.processes.api` mounts it onto the API); a signing key it pins; an HTTP client that signs in.

A second API application in the test's loop would do the same at the cost of its pools, committer and
NATS connection, and of its shutdown, which once in a few runs outlived the teardown's bound here."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from pathlib import Path

import aiohttp
import pytest_asyncio
from aiohttp import web

from console.app import mount
from proofs import signing, tree
from tests.plugins.stack import TEARDOWN_S_MAX, Stack, _listening, print_pending_tasks
from tools.embedded import free_port

CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


@dataclasses.dataclass
class Console:
    url: str  # ends in /console
    origin: str
    stack: Stack
    key: object  # the Ed25519 private key whose public half the console pins

    async def sign_tree_head(self) -> dict:
        """Sign the Merkle tree head at the journal's head now, as the tree follower would."""
        async with await self.stack.superuser() as conn:
            signed = await tree.sign_head(conn, self.key)
        return {"tree_size": signed.tree_size}

    def session(self) -> "Browserless":
        return Browserless(self, aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)))


@dataclasses.dataclass
class Browserless:
    """The console as a plain HTTP client sees it: redirects not followed, cookies kept."""

    console: Console
    http: aiohttp.ClientSession

    async def __aenter__(self) -> "Browserless":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.http.close()

    async def get(self, path: str) -> tuple[int, dict, str]:
        async with self.http.get(self.console.url + path, allow_redirects=False) as response:
            return response.status, response.headers, await response.text()

    async def post(self, path: str, data: dict, **headers) -> tuple[int, dict, str]:
        async with self.http.post(self.console.url + path, data=data, allow_redirects=False,
                                  headers=headers) as response:
            return response.status, response.headers, await response.text()

    async def sign_in(self, token: str) -> aiohttp.ClientResponse:
        status, headers, _ = await self.post("/sign-in", {"token": token})
        assert status == 303 and headers["Location"] == "/console/", status
        return headers

    async def csrf(self, path: str) -> str:
        """The CSRF token of the forms on the page at `path`."""
        status, _, page = await self.get(path)
        assert status == 200, page
        return CSRF_FIELD.search(page).group(1)


@pytest_asyncio.fixture(scope="session")
async def console(stack, tmp_path_factory) -> Console:
    key = signing.load_or_create_key(Path(tmp_path_factory.mktemp("console")) / "signing-key.pem")
    settings = stack.settings.replace(http={"port": free_port()}, console={"api_url": stack.client.base})
    app = web.Application()
    mount(app, settings, public_key=signing.public_key_hex(key))
    runner = await _listening(app, settings)
    origin = f"http://{settings.http.host}:{settings.http.port}"
    yield Console(f"{origin}/console", origin, stack, key)
    closing = asyncio.create_task(runner.cleanup(), name="console-teardown")  # bounded, as the stack's
    done, _ = await asyncio.wait([closing], timeout=TEARDOWN_S_MAX)
    if not done:
        print_pending_tasks()
        raise AssertionError(f"the console did not shut down within {TEARDOWN_S_MAX}s")
    closing.result()
