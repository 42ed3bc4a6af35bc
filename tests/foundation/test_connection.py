"""`Database`: connect/close, health, transactions, and connection failures that say what to fix."""

from __future__ import annotations

import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from amelia.server.database import Database, DatabaseConnectionError
from amelia.server.embedded import EmbeddedPostgres
from tests.pg import with_database


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def password_server() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this module's own that demands a password over TCP."""
    directory = Path(tempfile.mkdtemp(prefix="amelia-pw-"))
    server = EmbeddedPostgres(directory / "data", port=free_port(), password="right-pw")
    server.start()
    try:
        yield server
    finally:
        server.destroy()
        shutil.rmtree(directory, ignore_errors=True)


async def test_connect_health_and_close(database_url: str) -> None:
    database = Database(database_url, min_size=1, max_size=2)
    assert not await database.is_healthy()
    async with database:
        assert database.is_connected
        assert await database.is_healthy()
        status = database.pool_status()
        assert status["connected"] and status["max_size"] == 2
        async with database.connection() as conn:
            name = await conn.scalar(text("SELECT current_setting('application_name')"))
            assert name == "amelia"
            timeout = await conn.scalar(text("SELECT current_setting('statement_timeout')"))
            assert timeout == "30s"
    assert not database.is_connected
    assert not await database.is_healthy()
    with pytest.raises(RuntimeError, match="not connected"):
        _ = database.engine


async def test_transaction_commits_or_rolls_back(db: Database) -> None:
    async with db.connection() as conn:
        await conn.execute(text("CREATE TABLE scratch (v int)"))
    async with db.transaction() as conn:
        await conn.execute(text("INSERT INTO scratch VALUES (1)"))
    with pytest.raises(ZeroDivisionError):
        async with db.transaction() as conn:
            await conn.execute(text("INSERT INTO scratch VALUES (2)"))
            raise ZeroDivisionError
    async with db.connection() as conn:
        assert (await conn.scalars(text("SELECT v FROM scratch"))).all() == [1]


async def test_autocommit_connection_commits_each_statement(db: Database) -> None:
    async with db.connection() as conn:
        await conn.execute(text("CREATE TABLE scratch2 (v int)"))
        await conn.execute(text("INSERT INTO scratch2 VALUES (1)"))
        # Not rolled back when the block ends: each statement committed on its own.
    async with db.connection() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM scratch2")) == 1


async def test_refused_connection_names_target_and_setting() -> None:
    port = free_port()
    database = Database(f"postgresql://amelia:topsecret@127.0.0.1:{port}/amelia_db")
    with pytest.raises(DatabaseConnectionError) as caught:
        await database.connect()
    message = str(caught.value)
    for words in ("127.0.0.1", f"port {port}", "amelia_db", "refused", "AMELIA_DATABASE_URL"):
        assert words in message
    assert "topsecret" not in message
    assert not database.is_connected


async def test_wrong_password_names_target_and_setting(password_server: EmbeddedPostgres) -> None:
    good = password_server.url("postgres", tcp=True)
    async with Database(good, min_size=0, max_size=1) as database:
        assert await database.is_healthy()
    bad = good.replace("right-pw", "wrong-pw")
    with pytest.raises(DatabaseConnectionError) as caught:
        await Database(bad).connect()
    message = str(caught.value)
    assert f"port {password_server.port}" in message
    assert "'postgres'" in message
    assert "password" in message and "AMELIA_DATABASE_URL" in message
    assert "wrong-pw" not in message and "***" in message


async def test_missing_database_names_target_and_setting(pg_admin_url: str) -> None:
    name = f"missing_{uuid.uuid4().hex[:8]}"
    with pytest.raises(DatabaseConnectionError) as caught:
        await Database(with_database(pg_admin_url, name)).connect()
    message = str(caught.value)
    assert f"database {name!r}" in message
    assert "does not exist" in message and f"createdb {name}" in message
    assert "AMELIA_DATABASE_URL" in message


def test_min_larger_than_max_is_refused() -> None:
    with pytest.raises(ValueError, match="min_size"):
        Database("postgresql://u@h/db", min_size=5, max_size=2)
