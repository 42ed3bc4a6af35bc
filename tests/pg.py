"""Where the test suite gets PostgreSQL, and how it makes one database per test.

Order: `AMELIA_TEST_DATABASE_URL` if set; testcontainers (PostgreSQL 16) when a Docker
engine answers; otherwise an embedded server from the bundled binaries. The schema is
migrated once, with the real Alembic upgrade, into a template database; each test gets its
own database cloned from it (cheap: a file copy), so tests never see each other's rows.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from alembic import command
from amelia.server.database.migrations import alembic_config
from amelia.server.embedded import EmbeddedPostgres


def docker_engine_available() -> bool:
    """True when a Docker engine answers (not merely when the client is installed)."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        client.close()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def postgres_server() -> Iterator[tuple[str, str]]:
    """Yield (admin URL, how it was provided) for a PostgreSQL server the tests may use."""
    env_url = os.environ.get("AMELIA_TEST_DATABASE_URL", "").strip()
    if env_url:
        yield env_url, "AMELIA_TEST_DATABASE_URL"
        return
    if docker_engine_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver=None) as container:
            yield container.get_connection_url(), "testcontainers"
        return
    directory = Path(tempfile.mkdtemp(prefix="amelia-test-pg-"))
    server = EmbeddedPostgres(directory / "data")
    server.start()
    try:
        yield server.url("postgres"), "embedded"
    finally:
        server.destroy()
        with contextlib.suppress(OSError):
            directory.rmdir()


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database."""
    return make_url(url).set(database=database).render_as_string(hide_password=False)


def admin_execute(admin_url: str, *statements: str) -> None:
    """Run statements outside a transaction (CREATE/DROP DATABASE need that)."""
    conninfo = make_url(admin_url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement.encode())


def create_database(admin_url: str, template: str | None = None, prefix: str = "amelia_t") -> str:
    """Create a uniquely named database (optionally cloned from `template`); return its name."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    admin_execute(admin_url, f'CREATE DATABASE "{name}"{clause}')
    return name


def drop_database(admin_url: str, name: str) -> None:
    admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrate_to_head(url: str) -> None:
    """The real Alembic upgrade, exactly as `alembic upgrade head` runs it."""
    command.upgrade(alembic_config(url), "head")
