"""`BrainstormRepository`: brainstorming sessions, their messages and artifacts.

Message sequences are 1-based per session. `save_message_next_sequence` lets the database
allocate the next one, so several writers (or processes) can append to one session safely.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import RowMapping, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert

from amelia.server.database.base import RepositoryBase
from amelia.server.database.errors import DuplicateKeyError, translate_integrity_errors
from amelia.server.database.schema import (
    brainstorm_artifacts,
    brainstorm_messages,
    brainstorm_sessions,
)
from amelia.server.models.brainstorm import (
    Artifact,
    BrainstormingSession,
    Message,
    MessagePart,
    MessageUsage,
    SessionStatus,
    SessionUsageSummary,
)

# Each lost race means another writer committed, so N concurrent writers need at most N tries.
_MAX_SEQUENCE_ATTEMPTS = 32

_sessions = brainstorm_sessions
_messages = brainstorm_messages
_artifacts = brainstorm_artifacts


def _row_to_session(row: RowMapping) -> BrainstormingSession:
    return BrainstormingSession(
        id=row["id"],
        profile_id=row["profile_id"],
        driver_session_id=row["driver_session_id"],
        driver_type=row["driver_type"],
        status=row["status"],
        topic=row["topic"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _row_to_message(row: RowMapping) -> Message:
    usage = None
    if row["input_tokens"] is not None:
        cost = row["cost_usd"]
        usage = MessageUsage(
            input_tokens=row["input_tokens"],
            output_tokens=row["output_tokens"] or 0,
            cost_usd=float(cost) if cost is not None else 0.0,
        )
    parts = row["parts"]
    return Message(
        id=row["id"],
        session_id=row["session_id"],
        sequence=row["sequence"],
        role=row["role"],
        content=row["content"],
        parts=[MessagePart.model_validate(part) for part in parts] if parts else None,
        usage=usage,
        created_at=row["created_at"],
    )


def _row_to_artifact(row: RowMapping) -> Artifact:
    return Artifact(
        id=row["id"],
        session_id=row["session_id"],
        type=row["type"],
        path=row["path"],
        title=row["title"],
        created_at=row["created_at"],
    )


def _message_values(message: Message) -> dict[str, Any]:
    """Column values of a message, except `sequence`."""
    usage = message.usage
    return {
        "id": message.id,
        "session_id": message.session_id,
        "role": message.role.value,
        "content": message.content,
        # An empty list is stored as NULL, like "no parts".
        "parts": [part.model_dump(mode="json") for part in message.parts]
        if message.parts
        else None,
        "created_at": message.created_at,
        "input_tokens": usage.input_tokens if usage else None,
        "output_tokens": usage.output_tokens if usage else None,
        # str() first: Decimal(float) would keep the binary expansion's noise digits.
        "cost_usd": Decimal(str(usage.cost_usd)) if usage else None,
    }


class BrainstormRepository(RepositoryBase):
    """Brainstorm persistence (spec data-layer.md section 4.4)."""

    async def create_session(self, session: BrainstormingSession) -> None:
        """Insert a session.

        Raises:
            DuplicateKeyError: a session with that id exists.
        """
        statement = insert(_sessions).values(
            id=session.id,
            profile_id=session.profile_id,
            driver_session_id=session.driver_session_id,
            driver_type=session.driver_type,
            status=session.status.value,
            topic=session.topic,
            created_at=session.created_at,
            updated_at=session.updated_at,
        )
        async with self._connect() as conn:
            with translate_integrity_errors():
                await conn.execute(statement)

    async def get_session(self, session_id: uuid.UUID) -> BrainstormingSession | None:
        """The session, or None."""
        statement = select(_sessions).where(_sessions.c.id == session_id)
        async with self._connect() as conn:
            row = (await conn.execute(statement)).mappings().first()
        return None if row is None else _row_to_session(row)

    async def update_session(self, session: BrainstormingSession) -> None:
        """Store a session's driver ids, status, topic and `updated_at`; no-op if missing."""
        statement = (
            update(_sessions)
            .where(_sessions.c.id == session.id)
            .values(
                driver_session_id=session.driver_session_id,
                driver_type=session.driver_type,
                status=session.status.value,
                topic=session.topic,
                updated_at=session.updated_at,
            )
        )
        async with self._connect() as conn:
            await conn.execute(statement)

    async def delete_session(self, session_id: uuid.UUID) -> None:
        """Delete a session with its messages and artifacts; no-op if missing."""
        async with self._connect() as conn:
            await conn.execute(delete(_sessions).where(_sessions.c.id == session_id))

    async def list_sessions(
        self,
        profile_id: str | None = None,
        status: SessionStatus | str | None = None,
        limit: int = 50,
    ) -> list[BrainstormingSession]:
        """Sessions, most recently updated first.

        Args:
            profile_id: only this profile's sessions, when given (non-empty).
            status: only sessions in this status, when given.
            limit: at most this many sessions.

        Returns:
            The sessions, ordered by `updated_at` descending.
        """
        if limit <= 0:
            return []
        statement = select(_sessions)
        if profile_id:
            statement = statement.where(_sessions.c.profile_id == profile_id)
        if status:
            statement = statement.where(_sessions.c.status == SessionStatus(status).value)
        # id breaks ties so equal timestamps still give a stable order.
        statement = statement.order_by(_sessions.c.updated_at.desc(), _sessions.c.id.desc())
        async with self._connect() as conn:
            rows = (await conn.execute(statement.limit(limit))).mappings().all()
        return [_row_to_session(row) for row in rows]

    async def save_message(self, message: Message) -> None:
        """Insert a message with the sequence it carries.

        Raises:
            ValueError: `message.sequence` is 0 (use `save_message_next_sequence`).
            DuplicateKeyError: the session already has a message with that sequence (or id).
            ReferenceNotFoundError: the session does not exist.
        """
        if message.sequence < 1:
            raise ValueError(
                "message.sequence must be >= 1; use save_message_next_sequence to allocate one"
            )
        statement = insert(_messages).values(**_message_values(message), sequence=message.sequence)
        async with self._connect() as conn:
            with translate_integrity_errors():
                await conn.execute(statement)

    async def save_message_next_sequence(self, message: Message) -> Message:
        """Insert a message at the session's next sequence (max + 1), allocated atomically.

        One statement computes the sequence and inserts; when a concurrent writer took the
        same number the insert does nothing and is retried (bounded).

        Args:
            message: the message; its `sequence` is ignored.

        Returns:
            The stored message, with the allocated sequence.

        Raises:
            ReferenceNotFoundError: the session does not exist.
            DuplicateKeyError: the message id exists, or the retries ran out.
        """
        next_sequence = (
            select(func.coalesce(func.max(_messages.c.sequence), 0) + 1)
            .where(_messages.c.session_id == message.session_id)
            .scalar_subquery()
        )
        statement = (
            insert(_messages)
            .values(**_message_values(message), sequence=next_sequence)
            # Only the sequence race is expected; a duplicate id still raises.
            .on_conflict_do_nothing(index_elements=[_messages.c.session_id, _messages.c.sequence])
            .returning(*_messages.c)
        )
        for attempt in range(_MAX_SEQUENCE_ATTEMPTS):
            async with self._connect() as conn:
                with translate_integrity_errors():
                    row = (await conn.execute(statement)).mappings().first()
            if row is not None:
                return _row_to_message(row)
            # Jitter spreads the losers out so they do not collide again in lockstep.
            await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
        raise DuplicateKeyError(
            f"could not allocate a message sequence for session {message.session_id} "
            f"after {_MAX_SEQUENCE_ATTEMPTS} attempts"
        )

    async def get_messages(self, session_id: uuid.UUID, limit: int = 100) -> list[Message]:
        """The first `limit` messages of a session, in sequence order."""
        if limit <= 0:
            return []
        statement = (
            select(_messages)
            .where(_messages.c.session_id == session_id)
            .order_by(_messages.c.sequence)
            .limit(limit)
        )
        async with self._connect() as conn:
            rows = (await conn.execute(statement)).mappings().all()
        return [_row_to_message(row) for row in rows]

    async def get_max_sequence(self, session_id: uuid.UUID) -> int:
        """The highest message sequence of a session, 0 when it has none."""
        statement = select(func.coalesce(func.max(_messages.c.sequence), 0)).where(
            _messages.c.session_id == session_id
        )
        async with self._connect() as conn:
            value = await conn.scalar(statement)
        return int(value or 0)

    async def save_artifact(self, artifact: Artifact) -> None:
        """Insert an artifact.

        Raises:
            DuplicateKeyError: an artifact with that id exists.
            ReferenceNotFoundError: the session does not exist.
        """
        statement = insert(_artifacts).values(
            id=artifact.id,
            session_id=artifact.session_id,
            type=artifact.type,
            path=artifact.path,
            title=artifact.title,
            created_at=artifact.created_at,
        )
        async with self._connect() as conn:
            with translate_integrity_errors():
                await conn.execute(statement)

    async def get_artifacts(self, session_id: uuid.UUID) -> list[Artifact]:
        """A session's artifacts, oldest first."""
        statement = (
            select(_artifacts)
            .where(_artifacts.c.session_id == session_id)
            .order_by(_artifacts.c.created_at, _artifacts.c.id)
        )
        async with self._connect() as conn:
            rows = (await conn.execute(statement)).mappings().all()
        return [_row_to_artifact(row) for row in rows]

    async def get_session_usage(self, session_id: uuid.UUID) -> SessionUsageSummary | None:
        """Usage summed over the messages that recorded it; None when none did."""
        statement = select(
            func.count().label("message_count"),
            func.coalesce(func.sum(_messages.c.input_tokens), 0).label("input_tokens"),
            func.coalesce(func.sum(_messages.c.output_tokens), 0).label("output_tokens"),
            func.coalesce(func.sum(_messages.c.cost_usd), 0).label("cost_usd"),
        ).where(_messages.c.session_id == session_id, _messages.c.input_tokens.is_not(None))
        async with self._connect() as conn:
            row = (await conn.execute(statement)).mappings().one()
        if row["message_count"] == 0:
            return None
        return SessionUsageSummary(
            total_input_tokens=int(row["input_tokens"]),
            total_output_tokens=int(row["output_tokens"]),
            total_cost_usd=float(row["cost_usd"]),
            message_count=row["message_count"],
        )
