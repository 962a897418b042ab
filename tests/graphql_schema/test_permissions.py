"""Every operation of the schema has a rule in app.roles.PERMISSIONS (a new one without a
rule fails here), and the rules are enforced as written."""

from __future__ import annotations

from app.roles import PERMISSIONS, Role, allowed
from graphql_schema.schema import build_schema


def _operations() -> set[str]:
    schema = build_schema()._schema
    roots = (schema.query_type, schema.mutation_type, schema.subscription_type)
    return {name for root in roots if root
            for name in root.fields}


def test_every_operation_has_a_rule() -> None:
    missing = _operations() - set(PERMISSIONS)
    assert not missing, f"operations without a permission rule: {sorted(missing)}"
    assert not set(PERMISSIONS) - _operations(), "rules for operations that no longer exist"


def test_unknown_operations_are_refused() -> None:
    assert not any(allowed("somethingNew", role) for role in Role)


def test_predictors_and_reviewers_are_kept_apart() -> None:
    assert allowed("predict", Role.PREDICTOR) and not allowed("predict", Role.REVIEWER)
    assert allowed("claimReview", Role.REVIEWER) and not allowed("claimReview", Role.PREDICTOR)
    assert not any(allowed(op, Role.AUDITOR) for op in
                   ("predict", "predictBatch", "claimReview", "submitReview", "releaseReview"))
