"""The projector process as the command line composes it (`cli.processes`): the projector and,
beside it, the Merkle tree's follower, two siblings that never import each other."""

from __future__ import annotations

from proofs import store as tree_store
from tests.conftest import eventually


async def test_the_projector_process_follows_the_journal_with_the_tree_follower_beside_it(stack):
    """The test stack runs `cli.processes.projector`: a new entry reaches the stored tree with no
    proof or rebuild asking for it, so the tree follower runs in that process."""
    wallet = await stack.funded_wallet(100)
    vendor = await stack.vendor()
    paid = await stack.transfer(wallet.token, wallet.account_id, vendor.account_id, 3)
    assert paid.status == 201, paid.text

    async def tree_reached() -> bool:
        async with await stack.superuser() as conn:
            return await tree_store.tree_size(conn) >= paid.body["position"]

    await eventually(tree_reached, what="the stored tree reaching the new entry")
