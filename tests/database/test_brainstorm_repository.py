"""BrainstormRepository: sessions, messages (parts, usage, sequences), artifacts, usage sums."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import func, insert, select

from amelia.server.database import Database, schema
from amelia.server.database.brainstorm_repository import BrainstormRepository
from amelia.server.database.errors import DuplicateKeyError, ReferenceNotFoundError
from amelia.server.models.brainstorm import (
    Artifact,
    BrainstormingSession,
    Message,
    MessagePart,
    MessagePartType,
    MessageRole,
    MessageUsage,
    SessionStatus,
    SessionUsageSummary,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


async def new_session(
    repo: BrainstormRepository,
    profile_id: str = "work",
    status: SessionStatus = SessionStatus.ACTIVE,
    updated_at: datetime = T0,
) -> BrainstormingSession:
    session = BrainstormingSession(
        profile_id=profile_id, status=status, created_at=T0, updated_at=updated_at
    )
    await repo.create_session(session)
    return session


def message(session_id: uuid.UUID, sequence: int = 0, **fields: object) -> Message:
    return Message(
        session_id=session_id,
        sequence=sequence,
        role=fields.pop("role", MessageRole.USER),
        content=fields.pop("content", f"message {sequence}"),
        created_at=fields.pop("created_at", T0),
        **fields,
    )


async def test_session_round_trip_with_aware_datetimes(db: Database) -> None:
    repo = BrainstormRepository(db)
    paris = datetime(2025, 3, 1, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    session = BrainstormingSession(
        profile_id="work",
        driver_session_id="drv-1",
        driver_type="cli",
        topic="Caching — « design »",
        created_at=paris,
        updated_at=paris + timedelta(minutes=5),
    )
    await repo.create_session(session)
    fetched = await repo.get_session(session.id)
    assert fetched == session  # equal instants compare equal across zones
    assert fetched is not None
    assert fetched.created_at.utcoffset() == timedelta(0)
    assert fetched.created_at == datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    assert fetched.usage_summary is None
    assert await repo.get_session(uuid.uuid4()) is None

    with pytest.raises(DuplicateKeyError):
        await repo.create_session(session)


async def test_update_session_and_missing_is_a_silent_noop(db: Database) -> None:
    repo = BrainstormRepository(db)
    session = await new_session(repo)
    changed = session.model_copy(
        update={
            "driver_session_id": "d2",
            "driver_type": "api",
            "status": SessionStatus.READY_FOR_HANDOFF,
            "topic": "new",
            "updated_at": T0 + timedelta(hours=1),
            "profile_id": "other",  # not an updatable column
            "created_at": T0 + timedelta(days=9),  # nor this
        }
    )
    await repo.update_session(changed)
    fetched = await repo.get_session(session.id)
    assert fetched is not None
    assert fetched.status is SessionStatus.READY_FOR_HANDOFF
    assert (fetched.driver_session_id, fetched.driver_type, fetched.topic) == ("d2", "api", "new")
    assert fetched.updated_at == T0 + timedelta(hours=1)
    assert fetched.profile_id == "work"
    assert fetched.created_at == T0

    await repo.update_session(BrainstormingSession(profile_id="ghost"))  # no error
    async with db.connection() as conn:
        count = await conn.scalar(select(func.count()).select_from(schema.brainstorm_sessions))
    assert count == 1


async def test_delete_session_cascades_and_missing_is_silent(db: Database) -> None:
    repo = BrainstormRepository(db)
    session = await new_session(repo)
    keep = await new_session(repo)
    await repo.save_message(message(session.id, 1))
    await repo.save_message(message(keep.id, 1))
    await repo.save_artifact(Artifact(session_id=session.id, type="design", path="d.md"))
    await repo.delete_session(session.id)
    await repo.delete_session(session.id)
    await repo.delete_session(uuid.uuid4())
    assert await repo.get_session(session.id) is None
    assert await repo.get_messages(session.id) == []
    assert await repo.get_artifacts(session.id) == []
    assert len(await repo.get_messages(keep.id)) == 1


async def test_list_sessions_filters_order_and_limit(db: Database) -> None:
    repo = BrainstormRepository(db)
    a = await new_session(repo, "work", updated_at=T0 + timedelta(minutes=1))
    b = await new_session(repo, "work", SessionStatus.COMPLETED, T0 + timedelta(minutes=3))
    c = await new_session(repo, "home", updated_at=T0 + timedelta(minutes=2))
    d = await new_session(repo, "work", updated_at=T0 + timedelta(minutes=4))

    assert [s.id for s in await repo.list_sessions()] == [d.id, b.id, c.id, a.id]
    assert [s.id for s in await repo.list_sessions(profile_id="work")] == [d.id, b.id, a.id]
    assert [s.id for s in await repo.list_sessions(status=SessionStatus.ACTIVE)] == [
        d.id,
        c.id,
        a.id,
    ]
    assert [s.id for s in await repo.list_sessions("work", "completed")] == [b.id]
    assert [s.id for s in await repo.list_sessions(limit=2)] == [d.id, b.id]
    assert await repo.list_sessions(limit=0) == []
    assert len(await repo.list_sessions(profile_id="", status=None)) == 4  # falsy = no filter
    assert await repo.list_sessions(profile_id="nobody") == []
    with pytest.raises(ValueError):
        await repo.list_sessions(status="bogus")


async def test_messages_round_trip_parts_and_usage(db: Database) -> None:
    repo = BrainstormRepository(db)
    session = await new_session(repo)
    parts = [
        MessagePart(type=MessagePartType.REASONING, text="Pensons… 🤔"),
        MessagePart(
            type=MessagePartType.TOOL_CALL,
            tool_call_id="c1",
            tool_name="read_file",
            args={"path": "docs/日本.md", "opts": {"lines": [1, 2], "strict": True, "x": None}},
        ),
        MessagePart(type=MessagePartType.TOOL_RESULT, tool_call_id="c1", result="ok"),
        MessagePart(type=MessagePartType.TEXT, text="Voilà"),
    ]
    user = message(session.id, 1, content="Salut ✋")
    reply = message(
        session.id,
        2,
        role=MessageRole.ASSISTANT,
        content="Voilà",
        parts=parts,
        usage=MessageUsage(input_tokens=1200, output_tokens=300, cost_usd=0.012345),
    )
    empty_parts = message(session.id, 3, parts=[])
    for m in (reply, user, empty_parts):
        await repo.save_message(m)

    fetched = await repo.get_messages(session.id)
    assert [m.sequence for m in fetched] == [1, 2, 3]
    assert fetched[0] == user
    assert fetched[1] == reply
    assert fetched[1].parts == parts
    assert fetched[2].parts is None  # empty list stored as NULL
    assert fetched[0].usage is None
    assert fetched[1].created_at.utcoffset() == timedelta(0)

    async with db.connection() as conn:
        stored = (
            await conn.execute(
                select(
                    schema.brainstorm_messages.c.parts, schema.brainstorm_messages.c.cost_usd
                ).where(schema.brainstorm_messages.c.sequence == 2)
            )
        ).one()
    assert stored.parts[1]["args"]["opts"]["lines"] == [1, 2]
    assert stored.parts[1]["type"] == "tool-call"
    assert stored.cost_usd == Decimal("0.012345")


async def test_usage_rebuilt_only_when_input_tokens_present(db: Database) -> None:
    repo = BrainstormRepository(db)
    session = await new_session(repo)
    async with db.connection() as conn:
        await conn.execute(
            insert(schema.brainstorm_messages),
            [
                {
                    "id": uuid.uuid4(),
                    "session_id": session.id,
                    "sequence": 1,
                    "role": "assistant",
                    "content": "partial usage",
                    "created_at": T0,
                    "input_tokens": 10,
                    "output_tokens": None,
                    "cost_usd": None,
                },
                {
                    "id": uuid.uuid4(),
                    "session_id": session.id,
                    "sequence": 2,
                    "role": "assistant",
                    "content": "no input tokens",
                    "created_at": T0,
                    "input_tokens": None,
                    "output_tokens": 5,
                    "cost_usd": Decimal("1.5"),
                },
            ],
        )
    first, second = await repo.get_messages(session.id)
    assert first.usage == MessageUsage(input_tokens=10, output_tokens=0, cost_usd=0.0)
    assert second.usage is None
    assert await repo.get_session_usage(session.id) == SessionUsageSummary(
        total_input_tokens=10, total_output_tokens=0, total_cost_usd=0.0, message_count=1
    )


async def test_get_messages_returns_the_first_limit(db: Database) -> None:
    repo = BrainstormRepository(db)
    session = await new_session(repo)
    for seq in [5, 3, 1, 4, 2]:
        await repo.save_message(message(session.id, seq))
    assert [m.sequence for m in await repo.get_messages(session.id, limit=3)] == [1, 2, 3]
    assert await repo.get_messages(session.id, limit=0) == []
    assert await repo.get_messages(uuid.uuid4()) == []


async def test_save_message_refusals(db: Database) -> None:
    repo = BrainstormRepository(db)
    session = await new_session(repo)
    await repo.save_message(message(session.id, 1))
    with pytest.raises(DuplicateKeyError):
        await repo.save_message(message(session.id, 1, content="again"))
    with pytest.raises(ValueError, match="save_message_next_sequence"):
        await repo.save_message(message(session.id, 0))
    with pytest.raises(ReferenceNotFoundError):
        await repo.save_message(message(uuid.uuid4(), 1))
    assert [m.content for m in await repo.get_messages(session.id)] == ["message 1"]


async def test_get_max_sequence(db: Database) -> None:
    repo = BrainstormRepository(db)
    session = await new_session(repo)
    assert await repo.get_max_sequence(session.id) == 0
    assert await repo.get_max_sequence(uuid.uuid4()) == 0
    await repo.save_message(message(session.id, 1))
    await repo.save_message(message(session.id, 7))
    assert await repo.get_max_sequence(session.id) == 7


async def test_save_message_next_sequence_allocates_max_plus_one(db: Database) -> None:
    repo = BrainstormRepository(db)
    session = await new_session(repo)
    other = await new_session(repo)
    first = await repo.save_message_next_sequence(message(session.id, content="a"))
    second = await repo.save_message_next_sequence(
        message(session.id, 99, role=MessageRole.ASSISTANT, usage=MessageUsage(input_tokens=3))
    )
    assert (first.sequence, second.sequence) == (1, 2)
    assert second.usage == MessageUsage(input_tokens=3)
    await repo.save_message(message(session.id, 10))
    assert (await repo.save_message_next_sequence(message(session.id))).sequence == 11
    assert (await repo.save_message_next_sequence(message(other.id))).sequence == 1
    assert await repo.get_messages(session.id, limit=2) == [first, second]

    with pytest.raises(ReferenceNotFoundError):
        await repo.save_message_next_sequence(message(uuid.uuid4()))
    with pytest.raises(DuplicateKeyError):  # a reused message id is not retried
        await repo.save_message_next_sequence(first)


@pytest.fixture
async def wide_db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url, min_size=12, max_size=14, pool_timeout=30)
    await database.connect()
    try:
        yield database
    finally:
        await database.close()


@pytest.mark.slow
async def test_concurrent_writers_get_distinct_contiguous_sequences(wide_db: Database) -> None:
    repo = BrainstormRepository(wide_db)
    for writers in [2] * 10 + [12] * 5:
        session = await new_session(repo)
        stored = await asyncio.gather(
            *(
                repo.save_message_next_sequence(message(session.id, content=f"w{i}"))
                for i in range(writers)
            )
        )
        assert sorted(m.sequence for m in stored) == list(range(1, writers + 1))
        fetched = await repo.get_messages(session.id)
        assert {m.content for m in fetched} == {f"w{i}" for i in range(writers)}
        assert [m.sequence for m in fetched] == list(range(1, writers + 1))


async def test_artifacts_oldest_first(db: Database) -> None:
    repo = BrainstormRepository(db)
    session = await new_session(repo)
    late = Artifact(
        session_id=session.id, type="adr", path="adr/1.md", created_at=T0 + timedelta(1)
    )
    early = Artifact(
        session_id=session.id, type="design", path="design.md", title="Dès", created_at=T0
    )
    await repo.save_artifact(late)
    await repo.save_artifact(early)
    await repo.save_artifact(
        Artifact(session_id=session.id, type="design", path="design.md", created_at=T0)
    )  # no uniqueness on path
    fetched = await repo.get_artifacts(session.id)
    assert fetched[-1] == late
    assert early in fetched[:2]
    assert len(fetched) == 3
    assert await repo.get_artifacts(uuid.uuid4()) == []
    with pytest.raises(DuplicateKeyError):
        await repo.save_artifact(late)
    with pytest.raises(ReferenceNotFoundError):
        await repo.save_artifact(Artifact(session_id=uuid.uuid4(), type="spec", path="s.md"))


async def test_session_usage_sums_exactly(db: Database) -> None:
    repo = BrainstormRepository(db)
    session = await new_session(repo)
    assert await repo.get_session_usage(session.id) is None
    await repo.save_message(message(session.id, 1))  # no usage: not counted
    assert await repo.get_session_usage(session.id) is None
    for seq, cost in [(2, 0.1), (3, 0.2)]:
        await repo.save_message(
            message(
                session.id,
                seq,
                role=MessageRole.ASSISTANT,
                usage=MessageUsage(input_tokens=100, output_tokens=seq, cost_usd=cost),
            )
        )
    assert await repo.get_session_usage(session.id) == SessionUsageSummary(
        total_input_tokens=200, total_output_tokens=5, total_cost_usd=0.3, message_count=2
    )
