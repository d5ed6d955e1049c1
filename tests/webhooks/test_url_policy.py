"""The webhook URL policy (issue 24 #5): an IPv6 address that carries a non-global IPv4 address
is refused like that IPv4 address, in every embedding a router or a NAT64 gateway acts on; the
forms refused before stay refused, and the public addresses stay allowed."""

from __future__ import annotations

import contextlib

import pytest

from api.app import SERVICES
from webhooks import events as webhooks

# Each embeds 10.0.0.5 or 169.254.169.254 (the cloud metadata address) or 127.0.0.1.
EMBEDDED_PRIVATE = [
    "64:ff9b::a00:5",  # NAT64 well-known prefix (RFC 6052)
    "64:ff9b::a9fe:a9fe",
    "::a9fe:a9fe",  # IPv4-compatible (RFC 4291, deprecated)
    "::7f00:1",
    "::ffff:0:a00:5",  # SIIT, ::ffff:0:0:0/96 (RFC 2765)
    "::ffff:0:7f00:1",
    "2002:a00:5::1",  # 6to4 (RFC 3056): the IPv4 address is bits 16..47
    "2002:a9fe:a9fe::",
    "64:ff9b:1::a00:5",  # local-use NAT64 (RFC 8215): any address of the /48 is the network's own
    "64:ff9b:1:a00:5::",
]
REFUSED_BEFORE = ["127.0.0.1", "10.1.2.3", "169.254.169.254", "0.0.0.0", "224.0.0.1", "::1", "::", "fe80::1",
                  "fe80::1%eth0", "fc00::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.5", "2001:db8::1"]
# `is_global` on Python 3.11 calls these global although the docstring's "reserved" refuses them.
RESERVED_IPV6 = ["fec0::1", "4000::1", "100:0:0:1::1"]  # site-local (RFC 3879), unallocated, discard-only
PUBLIC = ["93.184.215.14", "8.8.8.8", "2001:4860:4860::8888", "2606:4700::1111", "::ffff:8.8.8.8",
          "64:ff9b::808:808", "2002:808:808::1"]


@pytest.mark.parametrize("address", EMBEDDED_PRIVATE)
def test_an_ipv6_address_carrying_a_private_ipv4_address_is_refused(address):
    assert not webhooks.address_allowed(address)


@pytest.mark.parametrize("address", REFUSED_BEFORE)
def test_the_addresses_refused_before_stay_refused(address):
    assert not webhooks.address_allowed(address)


@pytest.mark.parametrize("address", RESERVED_IPV6)
def test_a_reserved_or_deprecated_ipv6_address_is_refused(address):
    assert not webhooks.address_allowed(address)


@pytest.mark.parametrize("address", PUBLIC)
def test_a_public_address_in_any_form_is_allowed(address):
    assert webhooks.address_allowed(address)


@contextlib.contextmanager
def _private_urls_refused(stack):
    """The test stack allows loopback receivers; this test needs the production policy."""
    services = stack.app[SERVICES]
    allowing = services.settings
    services.settings = allowing.replace(webhooks={"allow_private": False})
    try:
        yield
    finally:
        services.settings = allowing


async def test_registering_a_nat64_form_of_the_metadata_address_is_422(stack):
    vendor = await stack.vendor()
    with _private_urls_refused(stack):
        reply = await stack.client.post(f"/v1/vendors/{vendor.account_id}/webhooks", token=vendor.token,
                                        json={"url": "http://[64:ff9b::a9fe:a9fe]/latest/meta-data"})
    assert (reply.status, reply.code) == (422, "webhook_url_not_allowed"), reply.text
