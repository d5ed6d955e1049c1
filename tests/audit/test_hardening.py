"""The security review's findings (issue 11) that the audit answers: a projection's verification
edited in the database is caught by the audit at the payment's position."""

from __future__ import annotations

import audit
from tests.plugins.helpers import verification_path


async def test_the_audit_checks_every_verification_against_its_entry(stack):
    wallet = await stack.funded_wallet(1_000)
    vendor = await stack.vendor()
    paid = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 40)
    await stack.client.get(verification_path(vendor.account_id, paid.body["id"]), token=vendor.token,
                           params={"min_position": paid.body["position"], "wait_ms": 5000})
    async with await stack.superuser() as conn:
        await conn.execute("UPDATE verifications SET amount = 4000 WHERE transfer_id = %s", (paid.body["id"],))
    try:
        report = await audit.run_audit(stack.database_url, projector_name=stack.settings.projector.name)
        failed = [c for c in report.checks if not c.ok]
        assert [c.name for c in failed] == ["verifications"], [(c.name, c.first) for c in failed]
        assert failed[0].first.position == paid.body["position"]
    finally:
        async with await stack.superuser() as conn:
            await conn.execute("UPDATE verifications SET amount = 40 WHERE transfer_id = %s", (paid.body["id"],))
    report = await audit.run_audit(stack.database_url, projector_name=stack.settings.projector.name)
    assert report.ok, report.first_failure
