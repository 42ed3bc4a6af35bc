"""Shared fixtures: a real PostgreSQL, a migrated template, one database per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from amelia.server.database import Database
from tests.pg import create_database, drop_database, migrate_to_head, postgres_server, with_database


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """URL of a maintenance database on the test server (for CREATE/DROP DATABASE)."""
    with postgres_server() as (url, _source):
        yield url


@pytest.fixture(scope="session")
def template_database(pg_admin_url: str) -> Iterator[str]:
    """A database migrated to head once per session; tests clone it."""
    name = create_database(pg_admin_url, prefix="amelia_tpl")
    try:
        migrate_to_head(with_database(pg_admin_url, name))
        yield name
    finally:
        drop_database(pg_admin_url, name)


@pytest.fixture
def database_url(pg_admin_url: str, template_database: str) -> Iterator[str]:
    """A fresh, migrated database of this test's own."""
    name = create_database(pg_admin_url, template=template_database)
    try:
        yield with_database(pg_admin_url, name)
    finally:
        drop_database(pg_admin_url, name)


@pytest.fixture
def empty_database_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh database with no schema at all."""
    name = create_database(pg_admin_url)
    try:
        yield with_database(pg_admin_url, name)
    finally:
        drop_database(pg_admin_url, name)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A connected `Database` on this test's own database (small pool)."""
    database = Database(database_url, min_size=1, max_size=5, statement_timeout_ms=60_000)
    await database.connect()
    try:
        yield database
    finally:
        await database.close()
