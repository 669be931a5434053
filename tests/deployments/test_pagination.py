"""Lists a page at a time (`greenroom.pagination`): version numbers from a path or query, the
page block."""

from __future__ import annotations

import pytest

from greenroom.errors import InvalidRequestError
from greenroom.pagination import Page, parse_version


@pytest.mark.parametrize(("text", "number"), [("1", 1), ("42", 42)])
def test_parse_version(text: str, number: int) -> None:
    assert parse_version(text) == number


@pytest.mark.parametrize("text", ["0", "-1", "x", "1.0", "", " 1", "²", "١", "000"])
def test_parse_version_refuses_what_is_not_a_positive_integer(text: str) -> None:
    with pytest.raises(InvalidRequestError, match=f"Invalid version '{text}': must be a positive"):
        parse_version(text)


@pytest.mark.parametrize("text", ["2147483648", "99999999999999999999999", "9" * 5000])
def test_parse_version_refuses_what_the_store_cannot_hold(text: str) -> None:
    with pytest.raises(InvalidRequestError, match="must be at most 2147483647"):
        parse_version(text)


def test_parse_version_reads_leading_zeros_and_the_largest() -> None:
    assert parse_version("0" * 5000 + "7") == 7
    assert parse_version("2147483647") == 2**31 - 1


def test_page_pagination_block() -> None:
    page = Page(items=["a", "b"], page=2, page_size=2, total=5)
    block = page.pagination()
    assert (block.page, block.page_size, block.current_page_size) == (2, 2, 2)
    assert (block.total_pages, block.total_results) == (3, 5)
    assert Page(items=[], page=1, page_size=10, total=0).pagination().total_pages == 0
