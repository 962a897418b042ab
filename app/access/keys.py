"""API keys: creating them (the plaintext is shown once) and checking them."""

from __future__ import annotations

import hashlib
import secrets
import time

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.access.roles import Principal, Role
from app.audit import log as audit
from app.db.tables import ApiKey
from app.db.types import utcnow
from app.errors import BadRequestError, NotFoundError

KEY_PREFIX = "arb_"
MAX_KEY_ID = 2**31 - 1  # the id column is a 32-bit integer on PostgreSQL


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


async def create_key(session: AsyncSession, role: str, name: str,
                     actor: str = "system:keys") -> tuple[ApiKey, str]:
    """Store a new key's hash; return the row and the plaintext (never stored). ``actor``:
    who created it, for the audit log."""
    try:
        parsed = Role(role.lower())  # the enum's name (PREDICTOR) or its value (predictor)
    except ValueError:
        raise BadRequestError(
            f"unknown role {role!r}; choose one of {', '.join(r.value for r in Role)}"
        ) from None
    if not name.strip():
        raise BadRequestError("a key needs a non-empty name")
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        name=name.strip(), role=parsed.value, key_hash=hash_key(plaintext), prefix=plaintext[:10]
    )
    session.add(row)
    await session.flush()
    audit.append(session, audit.Kind.KEY_CREATED, actor, "api_key", str(row.id),
                 {"name": row.name, "role": row.role, "prefix": row.prefix})
    return row, plaintext


async def list_keys(session: AsyncSession) -> list[ApiKey]:
    """Every key, revoked ones included, oldest first (hashes only, never a secret)."""
    return list((await session.exec(select(ApiKey).order_by(col(ApiKey.id)))).all())


async def revoke_key(session: AsyncSession, key_id: int, actor: str) -> ApiKey:
    """Revoke a key for good; servers stop accepting it within their key cache's TTL.
    Revoking a revoked key is refused (it would record a second revocation)."""
    row = await session.get(ApiKey, key_id)
    if row is None:
        raise NotFoundError(f"no API key {key_id}")
    if row.revoked_at is not None:
        raise BadRequestError(f"API key {key_id} ({row.name!r}) was already revoked at "
                              f"{row.revoked_at.isoformat()}")
    row.revoked_at = utcnow()
    session.add(row)
    await session.flush()
    audit.append(session, audit.Kind.KEY_REVOKED, actor, "api_key", str(key_id),
                 {"name": row.name, "role": row.role, "prefix": row.prefix})
    return row


async def issue_key(sessions: async_sessionmaker[AsyncSession], role: str, name: str,
                    actor: str) -> tuple[ApiKey, str]:
    """``create_key`` in a transaction of its own: the row and the plaintext, once committed."""
    async with sessions() as session, session.begin():
        return await create_key(session, role, name, actor)


async def withdraw_key(sessions: async_sessionmaker[AsyncSession], key_id: int | str,
                       actor: str) -> ApiKey:
    """``revoke_key`` in a transaction of its own: the revoked row, once committed. The id
    may come as text (a GraphQL ``ID``); one that is not a number names no key."""
    number = parse_key_id(key_id)
    async with sessions() as session, session.begin():
        return await revoke_key(session, number, actor)


def parse_key_id(key_id: int | str) -> int:
    """A key's id as stored; ``NotFoundError`` for text that cannot be one."""
    text = str(key_id).strip()
    if not (text.isascii() and text.isdigit() and int(text) <= MAX_KEY_ID):
        raise NotFoundError(f"no API key {key_id!r}: key ids are numbers, as apiKeys lists them")
    return int(text)


async def authenticate(session: AsyncSession, plaintext: str) -> Principal | None:
    """The principal of a live key, or None for an unknown or revoked one."""
    row = (await session.exec(select(ApiKey).where(ApiKey.key_hash == hash_key(plaintext)))).first()
    if row is None or row.revoked_at is not None or row.id is None:
        return None
    return Principal(row.id, row.name, Role(row.role))


class KeyVerifier:
    """Checks keys against the database, remembering good ones for ``ttl_seconds`` so a
    prediction does not pay a lookup; revocation therefore takes up to that long."""

    MAX_CACHED = 10_000

    def __init__(self, sessions: async_sessionmaker[AsyncSession], ttl_seconds: float) -> None:
        self.sessions = sessions
        self.ttl_seconds = ttl_seconds
        self._cache: dict[str, tuple[Principal, float]] = {}

    async def verify(self, plaintext: str) -> Principal | None:
        digest = hash_key(plaintext)
        hit = self._cache.get(digest)
        if hit and time.monotonic() - hit[1] < self.ttl_seconds:
            return hit[0]
        async with self.sessions() as session:
            principal = await authenticate(session, plaintext)
        if principal is None:
            self._cache.pop(digest, None)
            return None
        if len(self._cache) >= self.MAX_CACHED:
            self._cache.clear()
        self._cache[digest] = (principal, time.monotonic())
        return principal
