"""The PostgreSQL role the application runs as: it owns nothing, so it cannot switch the
log's append-only triggers off, and of the log's tables it may only read and append
(the sequencer also deletes the pending marks it has turned into leaves). Migrations run
as the owner; ``arbiter app-role NAME`` prints the statements for the owner to run."""

from __future__ import annotations

import re

LOG_TABLES = ("audit_events", "audit_leaves", "audit_nodes", "audit_checkpoints")
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def app_role_sql(role: str) -> list[str]:
    """The statements making ``role`` (a lowercase SQL name) the application's role, run by
    the database's owner after each migration."""
    if not _NAME.match(role):
        raise ValueError(f"{role!r} is not a lowercase SQL name (letters, digits, _)")
    tables = ", ".join(LOG_TABLES)
    return [
        f"DO $$ BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; "
        "END $$",
        f"GRANT USAGE ON SCHEMA public TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
        f"REVOKE UPDATE, DELETE, TRUNCATE ON {tables} FROM {role}",
        f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON alembic_version FROM {role}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}",
    ]
