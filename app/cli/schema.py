"""``arbiter schema``: the GraphQL schema in SDL, the file frontends generate their types from
(``schema.graphql`` at the repository root is this output; a test keeps the two equal)."""

from __future__ import annotations

from graphql_schema.schema import build_schema

REGENERATE = "uv run arbiter schema > schema.graphql"


def schema_sdl() -> str:
    """The schema as the server builds it, in SDL with its descriptions, ending in a newline."""
    return build_schema().as_str() + "\n"


def schema() -> None:
    """Print the GraphQL schema (SDL) for code generators: arbiter schema > schema.graphql"""
    print(schema_sdl(), end="")
