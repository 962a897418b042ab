"""Fixtures of the GraphQL tests over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.settings import Settings
from tests.support.server import LiveServer


@pytest.fixture
def live(request: pytest.FixtureRequest, settings: Settings) -> Iterator[LiveServer]:
    overrides = getattr(request, "param", {})
    with LiveServer(settings.model_copy(update=overrides)) as server:
        yield server
