"""Time to first paint of the console's vendor page, with many payments received (from the projection).

Starts PostgreSQL and NATS from their wheels in a temporary directory, an API with the console and a
projector in this process, pays `--payments` payments from one wallet to one vendor through
`POST /v1/batches` (1,000 a request), waits until the projection holds them, then in a headless
Chromium (LEDGER_CHROMIUM or PATH; Playwright never downloads one) signs in as the vendor and loads
`/console/vendor` `--loads` times, each in a fresh page. Prints the median and worst of the
browser's own timings: first contentful paint, and the HTML's arrival (responseEnd), in ms.

    python -m tools.console_bench [--payments 10000] [--loads 7]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

import aiohttp
from aiohttp import web

from api.app import build_app
from cli import processes
from console.app import mount
from ledger import db, principals
from ledger.config import Settings
from tools.embedded import EmbeddedNats, EmbeddedPostgres, free_port

BATCH_ITEMS = 1_000
PROJECTION_WAIT_MS = 10_000
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
PAINT_JS = """() => new Promise((resolve) => {
  const nav = performance.getEntriesByType('navigation')[0];
  const done = (fcp) => resolve({fcp_ms: fcp, html_ms: nav.responseEnd, rows: document.querySelectorAll('#payments tr').length});
  new PerformanceObserver((list) => {
    const paint = list.getEntriesByName('first-contentful-paint')[0];
    if (paint) done(paint.startTime);
  }).observe({type: 'paint', buffered: true});
  setTimeout(() => done(null), 5000);
})"""


async def _pay(http: aiohttp.ClientSession, api: str, token: str, wallet: str, vendor: str, count: int) -> dict:
    """`count` payments of 1 in batches; returns the last item's answer (its position)."""
    last = {}
    for start in range(0, count, BATCH_ITEMS):
        items = [{"type": "transfer", "idempotency_key": str(uuid.uuid4()), "from_account_id": wallet,
                  "to_account_id": vendor, "amount": 1, "currency": "USD", "reference": f"order {start + n}"}
                 for n in range(min(BATCH_ITEMS, count - start))]
        async with http.post(f"{api}/v1/batches", json={"mode": "atomic", "items": items},
                             headers={"Authorization": f"Bearer {token}"}) as response:
            answer = await response.json()
            assert response.status == 200, answer
        last = answer["items"][-1]["body"]
    return last


async def _world(http: aiohttp.ClientSession, api: str, admin: str, payments: int) -> tuple[str, str]:
    """A funded client wallet, a vendor, `payments` payments between them; returns (vendor token, account)."""
    async def post(path: str, body: dict, token: str = admin) -> dict:
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": str(uuid.uuid4())}
        async with http.post(api + path, json=body, headers=headers) as response:
            answer = await response.json()
            assert response.status in (200, 201), answer
            return answer

    client = await post("/v1/principals", {"role": "client", "name": "bench client"})
    vendor = await post("/v1/principals", {"role": "vendor", "name": "bench vendor"})
    wallet = await post("/v1/accounts", {"kind": "wallet", "currency": "USD", "owner_id": client["id"]})
    shop = await post("/v1/accounts", {"kind": "vendor", "currency": "USD", "owner_id": vendor["id"]})
    funding = await post("/v1/accounts", {"kind": "system", "currency": "USD"})
    await post("/v1/transfers", {"from_account_id": funding["id"], "to_account_id": wallet["id"], "amount": payments,
                                 "currency": "USD"})
    last = await _pay(http, api, client["token"], wallet["id"], shop["id"], payments)
    path = f"/v1/vendors/{shop['id']}/transfers/{last['id']}/verification"
    async with http.get(api + path, params={"min_position": last["position"], "wait_ms": PROJECTION_WAIT_MS},
                        headers={"Authorization": f"Bearer {vendor['token']}"}) as response:
        assert response.status == 200, await response.text()
    return vendor["token"], shop["id"]


async def _paint_times(api: str, token: str, loads: int) -> list[dict]:
    from playwright.async_api import async_playwright

    executable = os.environ.get("LEDGER_CHROMIUM") or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    if executable is None:
        raise SystemExit("console_bench: no Chromium (set LEDGER_CHROMIUM or put chromium on PATH)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, headless=True)
        context = await browser.new_context(viewport={"width": 1100, "height": 760})
        page = await context.new_page()
        await page.goto(f"{api}/console/sign-in")
        await page.get_by_label("API token").fill(token)
        await page.get_by_role("button", name="Sign in").click()
        await page.wait_for_url("**/console/vendor")
        timings = []
        for _ in range(loads):
            await page.goto(f"{api}/console/vendor", wait_until="load")
            timings.append(await page.evaluate(PAINT_JS))
        await browser.close()
    return timings


async def measure(*, payments: int, loads: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="console-bench-") as root:
        postgres = EmbeddedPostgres(data_dir=Path(root) / "pg", port=free_port())
        nats = EmbeddedNats(data_dir=Path(root) / "nats", port=free_port())
        await asyncio.to_thread(postgres.start)
        await asyncio.to_thread(nats.start)
        try:
            await db.migrate(postgres.url)
            # The rate limit off: seeding is not what is measured.
            settings = Settings().replace(database={"url": postgres.url}, nats={"url": nats.url},
                                          http={"port": free_port()}, api={"rate_per_s": 0})
            return await _run(settings, payments=payments, loads=loads)
        finally:
            await asyncio.to_thread(nats.stop)
            await asyncio.to_thread(postgres.stop)


async def _run(settings: Settings, *, payments: int, loads: int) -> dict:
    app = build_app(settings)
    mount(app, settings)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, settings.http.host, settings.http.port).start()
    projector = asyncio.create_task(processes.projector(settings))
    api = f"http://{settings.http.host}:{settings.http.port}"
    try:
        _, admin = await principals.create_at(settings.database.url, role="admin", name="bench admin")
        async with aiohttp.ClientSession() as http:
            token, _ = await _world(http, api, admin, payments)
        timings = await _paint_times(api, token, loads)
    finally:
        projector.cancel()
        await asyncio.gather(projector, return_exceptions=True)
        await runner.cleanup()
    fcp = [t["fcp_ms"] for t in timings if t["fcp_ms"] is not None]
    html = [t["html_ms"] for t in timings]
    return {"payments": payments, "loads": loads, "rows_shown": timings[-1]["rows"],
            "first_contentful_paint_ms": {"median": round(statistics.median(fcp), 1), "max": round(max(fcp), 1)},
            "html_received_ms": {"median": round(statistics.median(html), 1), "max": round(max(html), 1)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.console_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--payments", type=int, default=10_000)
    parser.add_argument("--loads", type=int, default=7)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(measure(payments=args.payments, loads=args.loads)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
