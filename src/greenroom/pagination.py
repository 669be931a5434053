"""Lists a page at a time, in SQL: the page, the latest version of each name of a versioned
table, sorting and filtering by field, and version numbers read from a path or query string.

Generic over the table: a versioned one has `workspace`, `name`, `entity_version` and a `pk`
that orders rows in the order they were written.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, and_, func, select
from sqlalchemy.orm import Session

from greenroom.errors import InvalidRequestError
from greenroom.schemas import MAX_VERSION, Pagination

Row = TypeVar("Row")


@dataclass(frozen=True)
class Page(Generic[Row]):
    items: list[Row]
    page: int
    page_size: int
    total: int

    @property
    def total_pages(self) -> int:
        return math.ceil(self.total / self.page_size)

    def pagination(self) -> Pagination:
        """The response's `pagination` block."""
        return Pagination(
            page=self.page,
            page_size=self.page_size,
            current_page_size=len(self.items),
            total_pages=self.total_pages,
            total_results=self.total,
        )


def parse_version(value: str) -> int:
    """A version number from a path or query string: 400 unless ASCII digits naming 1 to
    MAX_VERSION (`str.isdigit` alone lets `²` through to `int`, and a huge number would reach
    the database)."""
    shown = value if len(value) <= 40 else value[:40] + "…"
    digits = value.lstrip("0")
    if not (value.isascii() and value.isdigit()) or not digits:
        raise InvalidRequestError(f"Invalid version '{shown}': must be a positive integer")
    if len(digits) > len(str(MAX_VERSION)) or int(digits) > MAX_VERSION:
        raise InvalidRequestError(f"Invalid version '{shown}': must be at most {MAX_VERSION}")
    return int(digits)


def latest_versions(model: Any, *, workspace: str) -> Select[Any]:
    """The latest version of each name in a workspace, computed by the database: every row is
    joined to the greatest `entity_version` of its name (a grouped subquery)."""
    newest = (
        select(model.name, func.max(model.entity_version).label("entity_version"))
        .where(model.workspace == workspace)
        .group_by(model.name)
        .subquery("newest")
    )
    return (
        select(model)
        .join(
            newest,
            and_(model.name == newest.c.name, model.entity_version == newest.c.entity_version),
        )
        .where(model.workspace == workspace)
    )


def paginate(
    db_session: Session,
    query: Select[Any],
    *,
    model: Any,
    page: int,
    page_size: int,
    sort: str,
    sort_fields: Iterable[str],
) -> Page[Any]:
    """One page of `query` ordered by `sort` (a field, `-` first for descending; ties in the
    order rows were written), with the total count; both in SQL."""
    field = sort.removeprefix("-")
    if field not in sort_fields:
        raise InvalidRequestError(f"Cannot sort by '{field}'; one of: {', '.join(sort_fields)}")
    descending = sort.startswith("-")
    column, tiebreak = getattr(model, field), model.pk
    order = (column.desc(), tiebreak.desc()) if descending else (column.asc(), tiebreak.asc())
    total = db_session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = db_session.scalars(
        query.order_by(*order).offset((page - 1) * page_size).limit(page_size)
    )
    return Page(items=list(rows), page=page, page_size=page_size, total=total)


def filtered(
    query: Select[Any], model: Any, filters: dict[str, str], allowed: Iterable[str]
) -> Select[Any]:
    """`query` with an equality filter per field; 400 for a field not `allowed`."""
    for key, value in filters.items():
        if key not in allowed:
            raise InvalidRequestError(f"Cannot filter by '{key}'; one of: {', '.join(allowed)}")
        query = query.where(getattr(model, key) == value)
    return query
