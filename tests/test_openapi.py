"""The OpenAPI document says exactly what the server does."""

from __future__ import annotations

import re

import pytest

from api.framework import CURSOR_PATTERN, decode_cursor, encode_cursor

POSITION_MAX = 2**63 - 1


@pytest.mark.parametrize("position", [0, 1, 255, 256, 2**53, POSITION_MAX])
def test_every_cursor_the_api_gives_out_matches_the_documented_pattern_and_decodes_back(position):
    cursor = encode_cursor(position)
    assert re.fullmatch(CURSOR_PATTERN, cursor) and decode_cursor(cursor) == position


def test_the_largest_cursor_the_pattern_allows_is_the_largest_position():
    assert re.fullmatch(CURSOR_PATTERN, "f_________8") and decode_cursor("f_________8") == POSITION_MAX
    assert decode_cursor("") == 0
