"""Alembic: one head, a reversible first revision, no drift from the metadata, safe in parallel."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, func, insert, inspect, select, text
from sqlalchemy.engine import Connection, make_url

from amelia.server.database import schema
from amelia.server.database.migrations import (
    alembic_config,
    configure_kwargs,
    head_revision,
)
from tests.pg import migrate_to_head

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def sync_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql+psycopg").render_as_string(False)


def schema_diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(
        connection, opts={k: v for k, v in configure_kwargs(schema.metadata).items()}
    )
    return list(compare_metadata(context, schema.metadata))


def test_one_head() -> None:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert heads == [head_revision()]


def test_revision_files_are_sortable_and_explain_why() -> None:
    for path in (PROJECT_ROOT / "alembic" / "versions").glob("*.py"):
        assert path.name[:4].isdigit(), path.name
        body = path.read_text()
        assert "Why:" in body and "<say why" not in body, path.name
        assert "def downgrade() -> None:" in body and "    pass\n" not in body, path.name


def test_migrated_schema_matches_metadata(database_url: str) -> None:
    engine = create_engine(sync_url(database_url))
    with engine.connect() as conn:
        assert schema_diff(conn) == []
    engine.dispose()


def test_no_naive_timestamps_and_spec_column_types(database_url: str) -> None:
    engine = create_engine(sync_url(database_url))
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT table_name, column_name, data_type, numeric_precision, numeric_scale "
                "FROM information_schema.columns WHERE table_schema = 'public'"
            )
        ).all()
    engine.dispose()
    types = {(r.table_name, r.column_name): r for r in rows}
    assert not [k for k, r in types.items() if r.data_type == "timestamp without time zone"]
    expected = {
        ("workflows", "id"): "uuid",
        ("workflows", "created_at"): "timestamp with time zone",
        ("workflows", "started_at"): "timestamp with time zone",
        ("workflows", "completed_at"): "timestamp with time zone",
        ("workflows", "plan_cache"): "jsonb",
        ("workflows", "issue_cache"): "jsonb",
        ("workflows", "profile_id"): "text",
        ("workflow_log", "id"): "uuid",
        ("workflow_log", "workflow_id"): "uuid",
        ("workflow_log", "sequence"): "integer",
        ("workflow_log", "data"): "jsonb",
        ("workflow_log", "is_error"): "boolean",
        ("workflow_log", "timestamp"): "timestamp with time zone",
        ("token_usage", "id"): "uuid",
        ("token_usage", "workflow_id"): "uuid",
        ("token_usage", "cost_usd"): "numeric",
        ("token_usage", "timestamp"): "timestamp with time zone",
        ("prompts", "id"): "text",
        ("prompts", "current_version_id"): "uuid",
        ("prompt_versions", "id"): "uuid",
        ("prompt_versions", "created_at"): "timestamp with time zone",
        ("workflow_prompt_versions", "workflow_id"): "uuid",
        ("workflow_prompt_versions", "version_id"): "uuid",
        ("server_settings", "websocket_idle_timeout_seconds"): "numeric",
        ("server_settings", "stream_tool_results"): "boolean",
        ("server_settings", "updated_at"): "timestamp with time zone",
        ("profiles", "id"): "text",
        ("profiles", "agents"): "jsonb",
        ("profiles", "is_active"): "boolean",
        ("profiles", "working_dir"): "text",
        ("brainstorm_sessions", "id"): "uuid",
        ("brainstorm_messages", "id"): "uuid",
        ("brainstorm_messages", "session_id"): "uuid",
        ("brainstorm_messages", "parts"): "jsonb",
        ("brainstorm_messages", "cost_usd"): "numeric",
        ("brainstorm_messages", "is_system"): "boolean",
        ("brainstorm_artifacts", "id"): "uuid",
        ("brainstorm_artifacts", "session_id"): "uuid",
    }
    for key, data_type in expected.items():
        assert types[key].data_type == data_type, key
    for key in [("token_usage", "cost_usd"), ("brainstorm_messages", "cost_usd")]:
        assert (types[key].numeric_precision, types[key].numeric_scale) == (10, 6)
    tables = {t for t, _ in types}
    assert {t.name for t in schema.APP_TABLES} <= tables
    assert len(schema.APP_TABLES) == 11


def _insert_sample_rows(conn: Connection) -> None:
    now = datetime.now(UTC)
    wf = uuid.uuid4()
    session = uuid.uuid4()
    version = uuid.uuid4()
    conn.execute(insert(schema.workflows).values(id=wf, issue_id="I-1", worktree_path="/w"))
    conn.execute(
        insert(schema.workflow_log).values(
            id=uuid.uuid4(), workflow_id=wf, sequence=1, event_type="x", level="info", message="m"
        )
    )
    conn.execute(
        insert(schema.token_usage).values(
            id=uuid.uuid4(),
            workflow_id=wf,
            agent="a",
            model="m",
            input_tokens=1,
            output_tokens=2,
            cost_usd=Decimal("0.5"),
        )
    )
    conn.execute(
        insert(schema.prompt_versions).values(
            id=version, prompt_id="architect.plan", version_number=1, content="c"
        )
    )
    conn.execute(
        schema.prompts.update()
        .where(schema.prompts.c.id == "architect.plan")
        .values(current_version_id=version)
    )
    conn.execute(
        insert(schema.workflow_prompt_versions).values(
            workflow_id=wf, prompt_id="architect.plan", version_id=version
        )
    )
    conn.execute(
        insert(schema.profiles).values(id="p", working_dir="/w", agents={"a": {"model": "x"}})
    )
    conn.execute(
        insert(schema.brainstorm_sessions).values(
            id=session, profile_id="p", created_at=now, updated_at=now
        )
    )
    conn.execute(
        insert(schema.brainstorm_messages).values(
            id=uuid.uuid4(), session_id=session, sequence=1, role="user", content="hi"
        )
    )
    conn.execute(
        insert(schema.brainstorm_artifacts).values(
            id=uuid.uuid4(), session_id=session, type="design", path="/d.md"
        )
    )


def test_upgrade_downgrade_upgrade_with_rows_in_every_table(empty_database_url: str) -> None:
    migrate_to_head(empty_database_url)
    engine = create_engine(sync_url(empty_database_url))
    with engine.begin() as conn:
        _insert_sample_rows(conn)
        for table in schema.APP_TABLES:
            assert conn.scalar(select(func.count()).select_from(table)) >= 1, table.name
    from alembic import command

    command.downgrade(alembic_config(empty_database_url), "base")
    with engine.connect() as conn:
        remaining = set(inspect(conn).get_table_names())
        assert remaining <= {"alembic_version"}
    migrate_to_head(empty_database_url)
    with engine.connect() as conn:
        assert schema_diff(conn) == []
        assert conn.scalar(select(func.count()).select_from(schema.server_settings)) == 1
    engine.dispose()


def test_alembic_without_url_names_the_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "AMELIA_DATABASE_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "AMELIA_DATABASE_URL is not set" in output
    assert "amelia db upgrade" in output
    assert "Traceback" not in output


@pytest.mark.slow
async def test_five_concurrent_alembic_upgrades(empty_database_url: str) -> None:
    env = dict(os.environ, AMELIA_DATABASE_URL=empty_database_url)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "alembic",
            "upgrade",
            "head",
            cwd=PROJECT_ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(5)
    ]
    results = await asyncio.gather(*(p.communicate() for p in procs))
    codes = [p.returncode for p in procs]
    assert codes == [0] * 5, [err.decode()[-2000:] for _, err in results]
    engine = create_engine(sync_url(empty_database_url))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [
            head_revision()
        ]
        assert schema_diff(conn) == []
        assert conn.scalar(select(func.count()).select_from(schema.prompts)) > 0
    engine.dispose()
