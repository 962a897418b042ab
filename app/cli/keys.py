"""``arbiter keys``: create, list and revoke API keys."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from app.access.keys import create_key, list_keys, revoke_key
from app.cli.context import cli_actor, console, err, prepare, run

keys_cli = typer.Typer(help="API keys.", no_args_is_help=True)


@keys_cli.command("create")
def keys_create(
    role: Annotated[str, typer.Option(help="predictor, reviewer, auditor or admin (any case)")],
    name: Annotated[str, typer.Option(help="Who or what holds the key.")],
) -> None:
    """Create an API key; the key is printed once, alone on the last line."""
    settings = prepare()

    async def work(sessions: Any) -> tuple[Any, str]:
        async with sessions() as session, session.begin():
            return await create_key(session, role, name, cli_actor())

    row, plaintext = run(settings, work)
    err.print(f"created {row.role} key {row.id} for {row.name!r}; it is shown only once:")
    print(plaintext)


@keys_cli.command("list")
def keys_list() -> None:
    """List every key (never the secret): id, name, role, prefix, created, revoked."""
    settings = prepare()

    async def work(sessions: Any) -> list[Any]:
        async with sessions() as session:
            return await list_keys(session)

    table = Table("id", "name", "role", "prefix", "created", "revoked", title="API keys")
    for k in run(settings, work):
        table.add_row(str(k.id), k.name, k.role, k.prefix,
                      k.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                      k.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if k.revoked_at else "-")
    console.print(table)


@keys_cli.command("revoke")
def keys_revoke(key_id: Annotated[int, typer.Argument(help="The key's id (keys list).")]) -> None:
    """Revoke a key; servers refuse it within ARBITER_KEY_CACHE_SECONDS."""
    settings = prepare()

    async def work(sessions: Any) -> Any:
        async with sessions() as session, session.begin():
            return await revoke_key(session, key_id, cli_actor())

    row = run(settings, work)
    console.print(f"revoked {row.role} key {row.id} ({row.name!r}, {row.prefix}…)")
