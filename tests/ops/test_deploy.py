"""deploy/ as issue 24 #11 asks it: /metrics on a listener of its own that no service publishes,
never on the public API port; the tree-head signing key on a volume, not on the tmpfs."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path, PurePosixPath

import aiohttp
import pytest

from api import app as api_app
from tests.conftest import eventually
from tools.embedded import free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
LEDGER_PROCESSES = ("api", "projector", "webhooks")
METRICS_PORT = "9100"


def _services() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]


def test_every_process_serves_metrics_on_its_own_port_which_no_service_publishes():
    services = _services()
    for name in LEDGER_PROCESSES:
        assert services[name]["environment"]["LEDGER_METRICS_PORT"] == METRICS_PORT, name
    for name, service in services.items():
        for published in service.get("ports", []):
            assert not str(published).endswith(f":{METRICS_PORT}"), f"{name} publishes {published}"
    scraped = (DEPLOY / "prometheus.yml").read_text()
    assert "port: 8080" not in scraped and scraped.count(f"port: {METRICS_PORT}") == len(LEDGER_PROCESSES)


def _named_volume_mounts(service: dict) -> dict[str, str]:
    """Mount target -> volume name, for the named volumes (not the bind mounts) of a service."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if not source.startswith((".", "/")):
            mounts[target] = source
    return mounts


@pytest.mark.parametrize("name", ["projector", "migrate"])
def test_the_signing_key_lives_on_a_volume_not_on_the_tmpfs(name):
    services = _services()
    service = services[name]
    key = PurePosixPath(service["environment"]["LEDGER_SIGNING_KEY"])
    assert key.is_absolute()
    assert not any(key.is_relative_to(tmpfs) for tmpfs in service.get("tmpfs", [])), f"{key} is on a tmpfs"
    mounts = _named_volume_mounts(service)
    assert str(key.parent) in mounts, f"{key.parent} is not a volume of {name}"
    assert mounts[str(key.parent)] == _named_volume_mounts(services["projector"])[str(key.parent)]
    assert f"-o 10001 -g 10001 -m 0700 {key.parent}" in (DEPLOY / "Dockerfile").read_text()


async def test_an_api_given_a_metrics_port_serves_metrics_there_and_not_on_the_api_port(stack):
    settings = stack.settings.replace(http={"port": free_port(), "metrics_port": free_port()})
    server = asyncio.create_task(api_app.serve(settings))
    base = f"http://{settings.http.host}"
    try:
        async with aiohttp.ClientSession() as http:
            async def metrics_served() -> bool:
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with http.get(f"{base}:{settings.http.metrics_port}/metrics") as reply:
                        return reply.status == 200 and "ledger_" in await reply.text()
                return False

            await eventually(metrics_served, what="/metrics on the metrics port")
            async with http.get(f"{base}:{settings.http.port}/metrics") as reply:
                assert reply.status == 404
            async with http.get(f"{base}:{settings.http.port}/openapi.json") as reply:
                assert "/metrics" not in (await reply.json())["paths"]
    finally:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)


def test_only_the_api_and_the_webhook_worker_hold_the_webhook_key():
    """The key decrypts every vendor's signing secret: the API encrypts with it, the worker signs."""
    variable = "LEDGER_WEBHOOK_KEY"
    holders = {name for name, service in _services().items() if variable in service.get("environment", {})}
    assert holders == {"api", "webhooks"}
