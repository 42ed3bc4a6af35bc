"""API tests: the real app, its real lifespan and real PostgreSQL, in the test's event loop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from amelia.server.config import ServerConfig
from amelia.server.main import create_app
from amelia.server.services import AppServices


def test_config(database_url: str, tmp_path: Path) -> ServerConfig:
    return ServerConfig(
        database_url=database_url,
        db_pool_min_size=1,
        db_pool_max_size=5,
        checkpoint_pool_min_size=1,
        checkpoint_pool_max_size=4,
        home=tmp_path / "home",
    )


@pytest.fixture
async def app(database_url: str, tmp_path: Path) -> AsyncIterator[FastAPI]:
    application = create_app(test_config(database_url, tmp_path), migrate=True)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
def services(app: FastAPI) -> AppServices:
    return app.state.services  # type: ignore[no-any-return]


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://amelia.test") as http:
        yield http
