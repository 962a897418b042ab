"""The one Relay connection: ``Connection[T]`` and ``Edge[T]`` over a keyset ``Page``.

Strawberry names a specialisation after its node (``Edge[Prediction]`` is
``PredictionEdge``); each connection is a named subclass carrying its own description."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Self, TypeVar

import strawberry

from app.db.pagination import Page

Node = TypeVar("Node")


@strawberry.type
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None

    @classmethod
    def of(cls, page: Page[Any], after: str | None) -> PageInfo:
        """Relay page info of one keyset page read after cursor ``after``."""
        return cls(has_next_page=page.has_next, has_previous_page=after is not None,
                   start_cursor=page.cursors[0] if page.cursors else None,
                   end_cursor=page.cursors[-1] if page.cursors else None)


@strawberry.type
class Edge(Generic[Node]):
    cursor: str
    node: Node


@strawberry.type
class Connection(Generic[Node]):
    edges: list[Edge[Node]]
    page_info: PageInfo
    total_count: int

    @classmethod
    def of(cls, page: Page[Any], after: str | None, node: Callable[[Any], Node]) -> Self:
        """The page as a connection, each row made a node by ``node``."""
        edges = [Edge(cursor=c, node=node(r)) for r, c in zip(page.items, page.cursors,
                                                               strict=True)]
        return cls(edges=edges, page_info=PageInfo.of(page, after), total_count=page.total)
