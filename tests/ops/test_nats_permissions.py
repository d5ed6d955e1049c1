"""NATS logins against the real nats-server, once with the authorization of deploy/nats.conf and
once with the dev stack's (tools/embedded.py): each login may use only its own consumer, only the
projector may change the stream, and each process still does its own work with those grants."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import nats
import nats.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from ledger import bus
from tests.conftest import eventually
from tools.embedded import EmbeddedNats, free_port, write_private

pytestmark = pytest.mark.slow  # child processes: a NATS server of its own for every test

DEPLOY_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nats.conf"
USERS = ("api", "projector", "reader")
# The durable consumer each follower login uses in production (projector `main`, worker `main`).
DURABLE = {"projector": "projector-main", "reader": "webhooks-main"}
REFUSAL_WAIT_S = 1.0  # a refused request gets no answer: how long to wait for one
STREAM_MAX_AGE_S = 3600


class DeployNats(EmbeddedNats):
    """One JetStream server with deploy/nats.conf's `authorization` block, passwords filled in."""

    def _write_config(self) -> None:
        text = DEPLOY_CONF.read_text()
        block = text[text.index("authorization {"):]
        for user in USERS:
            password = urlsplit(self.url_for(user)).password  # made and kept by the base class
            block = block.replace(f"$LEDGER_NATS_{user.upper()}_PASSWORD", json.dumps(password))
        write_private(self.data_dir / "nats.conf", block)


@pytest.fixture(params=["deploy", "dev"])
def server(request, tmp_path):
    kind = DeployNats if request.param == "deploy" else EmbeddedNats
    nats_server = kind(data_dir=tmp_path / "nats", port=free_port(), auth=True)
    nats_server.start()
    yield nats_server
    nats_server.stop()


class Login:
    """A plain connection as one user, remembering the server's refusals."""

    def __init__(self, server: EmbeddedNats, user: str) -> None:
        self.url = server.url_for(user)
        self.errors: list[str] = []
        self.nc = None

    async def __aenter__(self) -> "Login":
        async def on_error(error: Exception) -> None:
            self.errors.append(str(error))

        self.nc = await nats.connect(self.url, error_cb=on_error, allow_reconnect=False)
        self.js = self.nc.jetstream(timeout=REFUSAL_WAIT_S)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.nc.close()

    async def refused(self, what: str) -> None:
        """The server said this login may not publish on `what` (a subject, or part of one; nats-py
        reports the subject in lower case)."""
        async def said() -> bool:
            return any("permissions violation" in e.lower() and what.lower() in e.lower() for e in self.errors)

        await eventually(said, timeout_s=5, what=f"a permissions violation for {what}")


async def _bus(server: EmbeddedNats, user: str, *, stream_max_age_s: int = STREAM_MAX_AGE_S, **kw) -> bus.EventBus:
    events = bus.EventBus(server.url_for(user), name=f"test-{user}", stream_replicas=1,
                          stream_max_age_s=stream_max_age_s, **kw)
    events.start()
    assert await events.wait_connected(10)
    return events


async def _publish(api: Login, count: int) -> None:
    for number in range(count):
        await api.js.publish(bus.SUBJECT, str(number).encode(), headers={bus.MSG_ID: f"event-{number}"})


async def _followers(server: EmbeddedNats):
    """The API's bus (it makes the stream), and the projector's and the worker's subscriptions."""
    api = await _bus(server, "api")
    projector = await _bus(server, "projector")
    reader = await _bus(server, "reader", manage_stream=False)
    subscriptions = {
        "projector": await projector.subscribe_doorbells(DURABLE["projector"], from_start=True),
        "reader": await reader.subscribe_doorbells(DURABLE["reader"], from_start=True),
    }
    return {"api": api, "projector": projector, "reader": reader}, subscriptions


async def _close(buses) -> None:
    for events in buses:
        await events.close()


async def test_each_login_does_its_own_work(server):
    buses, subscriptions = await _followers(server)
    try:
        async with Login(server, "api") as api:
            await _publish(api, 3)
        for user, subscription in subscriptions.items():
            fetched = await subscription.fetch(10, timeout=5)
            assert len(fetched) == 3
            await fetched[-1].ack()

            async def all_acked(durable=DURABLE[user], events=buses[user]) -> bool:
                info = await events.js.consumer_info(bus.STREAM, durable)
                return info.ack_floor.stream_seq == 3 and info.num_ack_pending == 0

            await eventually(all_acked, what=f"{user}'s ack of all three events")
    finally:
        await _close(buses.values())


@pytest.mark.parametrize("user", ["projector", "reader"])
async def test_each_follower_may_replace_its_own_consumer(server, user):
    """A consumer an earlier version made with explicit acks is deleted and made anew (ledger/bus.py)."""
    api = await _bus(server, "api")
    follower = await _bus(server, user, manage_stream=user == "projector")
    try:
        await follower.js.add_consumer(bus.STREAM, ConsumerConfig(
            durable_name=DURABLE[user], deliver_policy=DeliverPolicy.NEW, ack_policy=AckPolicy.EXPLICIT,
            filter_subject=bus.SUBJECT))
        await follower.subscribe_doorbells(DURABLE[user], from_start=False)
        info = await follower.js.consumer_info(bus.STREAM, DURABLE[user])
        assert info.config.ack_policy == AckPolicy.ALL
    finally:
        await _close([follower, api])


@pytest.mark.parametrize("thief, victim", [("reader", "projector"), ("projector", "reader")])
async def test_a_follower_cannot_delete_pull_or_ack_anothers_consumer(server, thief, victim):
    buses, subscriptions = await _followers(server)
    durable = DURABLE[victim]
    try:
        async with Login(server, "api") as api:
            await _publish(api, 2)
        async with Login(server, thief) as login:
            with pytest.raises(nats.errors.TimeoutError):
                await login.js.delete_consumer(bus.STREAM, durable)
            await login.refused(f"$JS.API.CONSUMER.DELETE.{bus.STREAM}.{durable}")
            with pytest.raises(nats.errors.TimeoutError):
                await login.nc.request(f"$JS.API.CONSUMER.MSG.NEXT.{bus.STREAM}.{durable}",
                                       json.dumps({"batch": 2, "no_wait": True}).encode(), timeout=REFUSAL_WAIT_S)
            await login.refused(f"$JS.API.CONSUMER.MSG.NEXT.{bus.STREAM}.{durable}")
            with pytest.raises(nats.errors.TimeoutError):
                await login.js.add_consumer(bus.STREAM, ConsumerConfig(
                    durable_name="spy", deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT))
            await login.refused("$JS.API.CONSUMER.")
            # The victim still has its consumer and both events: nobody pulled them.
            fetched = await subscriptions[victim].fetch(10, timeout=5)
            assert len(fetched) == 2
            # An ack sent by the thief on the victim's reply subject is refused, not applied.
            await login.nc.publish(fetched[-1].reply, b"+ACK")
            await login.nc.flush()
            await login.refused(f"$JS.ACK.{bus.STREAM}.{durable}")
        info = await buses[victim].js.consumer_info(bus.STREAM, durable)
        assert info.num_ack_pending == 2 and info.ack_floor.stream_seq == 0
    finally:
        await _close(buses.values())


@pytest.mark.parametrize("user", ["api", "reader"])
async def test_only_the_projector_may_change_the_stream(server, user):
    buses, _ = await _followers(server)
    changed = StreamConfig(name=bus.STREAM, subjects=[bus.SUBJECT], max_age=1)
    try:
        async with Login(server, user) as login:
            with pytest.raises(nats.errors.TimeoutError):
                await login.js.update_stream(changed)
            await login.refused(f"$JS.API.STREAM.UPDATE.{bus.STREAM}")
            with pytest.raises(nats.errors.TimeoutError):
                await login.js.delete_stream(bus.STREAM)
            await login.refused(f"$JS.API.STREAM.DELETE.{bus.STREAM}")
        info = await buses["api"].js.stream_info(bus.STREAM)
        assert info.config.max_age == STREAM_MAX_AGE_S
    finally:
        await _close(buses.values())


async def test_the_api_still_connects_and_publishes_when_the_stream_differs_from_its_settings(server):
    """The stream belongs to the projector: an API process configured otherwise may not change it,
    and must not stay away from NATS for that."""
    projector = await _bus(server, "projector")
    api = await _bus(server, "api", stream_max_age_s=60)
    try:
        acked = await api.js.publish(bus.SUBJECT, b"1", headers={bus.MSG_ID: "after-a-refused-update"})
        assert acked.stream == bus.STREAM
        info = await projector.js.stream_info(bus.STREAM)
        assert info.config.max_age == STREAM_MAX_AGE_S and info.state.messages == 1
    finally:
        await _close([api, projector])
