"""Bad input to the proof routes: every malformed size or position is its exact 400 problem with
its place, a size past the head is 422 `tree_size_out_of_range`; never a 5xx (the contract's
bad-input rules, tests/api/test_bad_input.py for the shared shape checks)."""

from __future__ import annotations

import pytest

from tests.plugins.problems import assert_problem


# ---- proofs: sizes and positions ------------------------------------------------------------

PROOF_QUERIES = {
    "tree_size zero": ("/v1/journal/tree", {"tree_size": "0"}, "$.query.tree_size"),
    "tree_size negative": ("/v1/journal/tree", {"tree_size": "-1"}, "$.query.tree_size"),
    "tree_size not a number": ("/v1/journal/tree", {"tree_size": "ten"}, "$.query.tree_size"),
    "tree_size past INT8": ("/v1/journal/tree", {"tree_size": str(2**63)}, "$.query.tree_size"),
    "unknown parameter": ("/v1/journal/tree", {"size": "1"}, "$.query"),
    "position missing": ("/v1/journal/proofs/inclusion", {}, "$.query"),
    "position zero": ("/v1/journal/proofs/inclusion", {"position": "0"}, "$.query.position"),
    "position fractional": ("/v1/journal/proofs/inclusion", {"position": "1.5"}, "$.query.position"),
    "inclusion tree_size zero": ("/v1/journal/proofs/inclusion", {"position": "1", "tree_size": "0"},
                                 "$.query.tree_size"),
    "from_size missing": ("/v1/journal/proofs/consistency", {}, "$.query"),
    "from_size zero": ("/v1/journal/proofs/consistency", {"from_size": "0"}, "$.query.from_size"),
    "to_size negative": ("/v1/journal/proofs/consistency", {"from_size": "1", "to_size": "-3"}, "$.query.to_size"),
}


@pytest.mark.parametrize("name", list(PROOF_QUERIES))
async def test_a_bad_proof_query_is_400_with_its_path(stack, payer, name):
    path, params, where = PROOF_QUERIES[name]
    reply = await stack.client.get(path, token=payer.token, params=params)
    assert_problem(reply, 400, "validation_error", where)


async def test_a_client_proving_someone_elses_entry_with_a_bad_tree_size_is_400_shape_before_ownership(stack, payer):
    reply = await stack.client.get("/v1/journal/proofs/inclusion", token=payer.token,
                                   params={"position": "1", "tree_size": "0"})
    assert_problem(reply, 400, "validation_error", "$.query.tree_size")


@pytest.mark.parametrize("path, params", [
    ("/v1/journal/tree", {"tree_size": str(2**62)}),
    ("/v1/journal/proofs/consistency", {"from_size": "1", "to_size": str(2**62)}),
    ("/v1/journal/proofs/consistency", {"from_size": str(2**62)}),
])
async def test_a_size_past_the_head_is_422_tree_size_out_of_range(stack, payer, path, params):
    assert_problem(await stack.client.get(path, token=payer.token, params=params), 422, "tree_size_out_of_range")
