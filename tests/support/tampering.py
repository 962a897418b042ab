"""The stored audit log changed behind the application's back, as an intruder would."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from app.db.engine import make_engine


def tamper(url: str, statement: str) -> None:
    """Change the stored log behind the application's back, as an intruder with database
    access would: switch the append-only triggers off, then run ``statement``."""
    async def work() -> None:
        engine = make_engine(url)
        try:
            async with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    await conn.execute(text("ALTER TABLE audit_events DISABLE TRIGGER USER"))
                else:
                    await conn.execute(text("DROP TRIGGER IF EXISTS audit_events_no_update"))
                    await conn.execute(text("DROP TRIGGER IF EXISTS audit_events_no_delete"))
                await conn.execute(text(statement))
        finally:
            await engine.dispose()
    asyncio.run(work())


def rewrite_route(event_id: int) -> str:
    """An UPDATE turning a REVIEW routing decision of a prediction event into AUTO."""
    return (f"UPDATE audit_events SET payload = replace(payload, '\"route\":\"REVIEW\"', "
            f"'\"route\":\"AUTO\"') WHERE id = {event_id}")
