"""``schema.graphql`` at the repository root is what frontends generate types from: it must
be the schema the code builds, printed by ``arbiter schema``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from app.cli.schema import REGENERATE, schema_sdl
from tests.support.processes import ARBITER

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schema.graphql"


def test_the_checked_in_schema_is_the_codes() -> None:
    assert SCHEMA_FILE.exists(), f"schema.graphql is missing; run `{REGENERATE}`"
    assert SCHEMA_FILE.read_text() == schema_sdl(), (
        f"schema.graphql differs from the schema the code builds; run `{REGENERATE}` and "
        "commit it (and say in the change which names changed)")


def test_arbiter_schema_prints_it(tmp_path: Path) -> None:
    env = {**os.environ, "ARBITER_DATA_DIR": str(tmp_path)}
    result = subprocess.run([ARBITER, "schema"], capture_output=True, text=True, env=env,
                            check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == SCHEMA_FILE.read_text()
    for name in ("type Query {", "type Mutation {", "type Subscription {", "enum Role {",
                 "createApiKey(name: String!, role: Role!): CreatedApiKey!",
                 "revokeApiKey(id: ID!): ApiKey!", "reviewAgreement(task: String = null): "
                 "ReviewAgreement!", "@deprecated(reason: "):
        assert name in result.stdout, name
