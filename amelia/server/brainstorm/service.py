"""`BrainstormService`: sessions, turns with the brainstormer agent, and the handoff.

A turn (user message -> agent reply) runs in a background task the service owns, so the HTTP
request answers at once and shutdown can wait for, or cancel, the turns in flight. Turns of
one session are serialized in this process so that each reply sees the previous one in its
history; message sequences are still allocated by the database, so several server processes
can append to one session safely. A failed turn is stored as an assistant message marked as
an error (`brainstorm_api.error_message`) and left out of later turns' history.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any

from amelia.agents.prompts.resolver import PromptResolver
from amelia.core.types import AgentConfig, DriverType, Profile
from amelia.drivers import AgentReply, AgentRequest, ChatMessage, build_driver
from amelia.server.brainstorm import (
    AGENT,
    ARTIFACT_INSTRUCTIONS,
    BrainstormArtifactNotFoundError,
    BrainstormServiceStoppedError,
    BrainstormSessionNotFoundError,
    brainstorm_event,
    record_artifacts,
    touch_session,
)
from amelia.server.database.brainstorm_repository import BrainstormRepository
from amelia.server.database.connection import Database
from amelia.server.database.profile_repository import ProfileRepository
from amelia.server.database.prompt_repository import PromptRepository
from amelia.server.events.bus import EventBus
from amelia.server.models.brainstorm import (
    BrainstormingSession,
    Message,
    MessageRole,
    MessageUsage,
    SessionStatus,
)
from amelia.server.models.brainstorm_api import (
    ProfileInfo,
    SessionCreatedResponse,
    SessionDetailResponse,
    SessionMessage,
    error_message,
    is_error_message,
)
from amelia.server.models.events import EventLevel, EventType
from amelia.server.orchestrator.service import OrchestratorService

logger = logging.getLogger(__name__)

SYSTEM_PROMPT_ID = "brainstormer.system"
DETAIL_MESSAGE_LIMIT = 100
DEFAULT_STOP_GRACE_SECONDS = 10.0
# After the grace period, cancelled turns get this long to record that they were interrupted.
_CANCEL_WAIT_SECONDS = 5.0


class BrainstormService:
    """Sessions, turns with the brainstormer agent, artifacts and the handoff to a workflow.

    Args:
        db: the database.
        bus: where brainstorm events are broadcast.
        orchestrator: queues the workflow a handoff creates.
        environ: environment for the `api` driver's key and base URL (default `os.environ`).
    """

    def __init__(
        self,
        db: Database,
        bus: EventBus,
        orchestrator: OrchestratorService,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._db = db
        self._bus = bus
        self._orchestrator = orchestrator
        self._environ = environ
        self._repo = BrainstormRepository(db)
        self._profiles = ProfileRepository(db)
        self._resolver = PromptResolver(PromptRepository(db))
        self._tasks: dict[uuid.UUID, set[asyncio.Task[None]]] = {}
        # A session's lock lives as long as a turn holds or awaits it.
        self._locks: weakref.WeakValueDictionary[uuid.UUID, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._accepting = False
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Accept turns."""
        self._accepting = True
        self._stopping = False

    async def stop(self, grace: float = DEFAULT_STOP_GRACE_SECONDS) -> None:
        """Refuse new turns, wait up to `grace` seconds for those in flight, cancel the rest.

        A turn cancelled while waiting for its agent records an error reply saying so.

        Args:
            grace: seconds to let the turns in flight finish before cancelling them.
        """
        self._accepting = False
        tasks = self._running()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        if pending:
            self._stopping = True
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=_CANCEL_WAIT_SECONDS)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no turn is running; False when `timeout` seconds passed first."""
        deadline = asyncio.get_running_loop().time() + timeout
        while tasks := self._running():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            await asyncio.wait(tasks, timeout=remaining)
        return True

    def _running(self) -> set[asyncio.Task[None]]:
        return {task for tasks in self._tasks.values() for task in tasks}

    def _spawn(self, session_id: uuid.UUID, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro, name=f"brainstorm-{session_id}")
        self._tasks.setdefault(session_id, set()).add(task)

        def forget(done: asyncio.Task[None]) -> None:
            tasks = self._tasks.get(session_id)
            if tasks is not None:
                tasks.discard(done)
                if not tasks:
                    del self._tasks[session_id]

        task.add_done_callback(forget)

    # ------------------------------------------------------------------ sessions

    async def create_session(self, profile_id: str, topic: str | None) -> SessionCreatedResponse:
        """Create an active session; the profile need not exist (its info is then null).

        Emits `brainstorm_session_created` on the bus.
        """
        async with self._db.connection() as conn:
            profile = await self._profiles.bind(conn).get_profile(profile_id)
            info = ProfileInfo.of(profile)
            session = BrainstormingSession(
                profile_id=profile_id, topic=topic, driver_type=info.driver if info else None
            )
            await self._repo.bind(conn).create_session(session)
        self._emit(
            session.id,
            EventType.BRAINSTORM_SESSION_CREATED,
            "Brainstorming session created",
            {"session": session.model_dump(mode="json")},
        )
        return SessionCreatedResponse(session=session, profile=info)

    async def list_sessions(
        self, profile_id: str | None, status: SessionStatus | None, limit: int
    ) -> list[BrainstormingSession]:
        """Sessions, most recently updated first, optionally filtered."""
        return await self._repo.list_sessions(profile_id=profile_id, status=status, limit=limit)

    async def get_session_detail(self, session_id: uuid.UUID) -> SessionDetailResponse:
        """The session with its usage, its first 100 messages, its artifacts and profile info.

        Raises:
            BrainstormSessionNotFoundError: unknown session.
        """
        # One pooled connection for the five reads of one request.
        async with self._db.connection() as conn:
            repo = self._repo.bind(conn)
            session = await repo.get_session(session_id)
            if session is None:
                raise BrainstormSessionNotFoundError(session_id)
            messages = await repo.get_messages(session_id, limit=DETAIL_MESSAGE_LIMIT)
            artifacts = await repo.get_artifacts(session_id)
            usage = await repo.get_session_usage(session_id)
            profile = await self._profiles.bind(conn).get_profile(session.profile_id)
        return SessionDetailResponse(
            session=session.model_copy(update={"usage_summary": usage}),
            messages=[SessionMessage.of(message) for message in messages],
            artifacts=artifacts,
            profile=ProfileInfo.of(profile),
        )

    async def delete_session(self, session_id: uuid.UUID) -> None:
        """Cancel the session's turns in flight, then delete it (cascade); no-op if unknown."""
        tasks = set(self._tasks.get(session_id, ()))
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=_CANCEL_WAIT_SECONDS)
        await self._repo.delete_session(session_id)

    # ------------------------------------------------------------------ turns

    async def send_message(self, session_id: uuid.UUID, content: str) -> uuid.UUID:
        """Start a turn in the background and return the id the assistant's reply will have.

        Raises:
            BrainstormServiceStoppedError: the service is stopping.
            BrainstormSessionNotFoundError: unknown session.
        """
        if not self._accepting:
            raise BrainstormServiceStoppedError("The server is shutting down")
        session = await self._repo.get_session(session_id)
        if session is None:
            raise BrainstormSessionNotFoundError(session_id)
        if not self._accepting:  # `stop` began during the read: it would not see this turn
            raise BrainstormServiceStoppedError("The server is shutting down")
        reply_id = uuid.uuid4()
        self._spawn(session_id, self._run_turn(session, content, reply_id))
        return reply_id

    async def _run_turn(
        self, session: BrainstormingSession, content: str, reply_id: uuid.UUID
    ) -> None:
        try:
            lock = self._locks.setdefault(session.id, asyncio.Lock())
            async with lock:
                await self._turn(session, content, reply_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Only the database can fail here (driver errors became messages): log, never
            # let a background task die with an unretrieved exception.
            logger.exception("brainstorm turn of session %s failed", session.id)

    async def _turn(self, session: BrainstormingSession, content: str, reply_id: uuid.UUID) -> None:
        user = await self._repo.save_message_next_sequence(
            Message(session_id=session.id, role=MessageRole.USER, content=content)
        )
        try:
            profile, agent, reply = await self._ask_agent(session, user)
        except asyncio.CancelledError:
            if self._stopping:
                await self._record_failure(
                    session.id, reply_id, "the server shut down before the agent answered", None
                )
            raise
        except Exception as exc:
            logger.warning("brainstormer of session %s failed: %s", session.id, exc)
            await self._record_failure(session.id, reply_id, str(exc) or repr(exc), exc)
            return
        await self._record_reply(session.id, reply_id, profile, agent, reply)

    async def _ask_agent(
        self, session: BrainstormingSession, user: Message
    ) -> tuple[Profile, AgentConfig, AgentReply]:
        profile = await self._profiles.get_profile(session.profile_id)
        if profile is None:
            raise ValueError(f"Profile {session.profile_id!r} not found")
        agent = profile.get_agent_config(AGENT)
        history = await self._history(session.id, user.sequence)
        system = await self._system_prompt(session)
        driver = build_driver(agent, self._environ)
        try:
            reply = await driver.run(
                AgentRequest(
                    prompt=user.content,
                    system=system,
                    history=history,
                    cwd=Path(profile.working_dir),
                )
            )
        finally:
            await driver.aclose()
        return profile, agent, reply

    async def _history(self, session_id: uuid.UUID, before: int) -> tuple[ChatMessage, ...]:
        """The conversation before sequence `before`, failed turns left out."""
        messages = await self._repo.get_messages(session_id, limit=before)
        return tuple(
            ChatMessage(
                role="user" if message.role is MessageRole.USER else "assistant",
                content=message.content,
            )
            for message in messages
            if message.sequence < before and not is_error_message(message)
        )

    async def _system_prompt(self, session: BrainstormingSession) -> str:
        resolved = await self._resolver.get_prompt(SYSTEM_PROMPT_ID)
        sections = [resolved.content.strip(), ARTIFACT_INSTRUCTIONS]
        if session.topic:
            sections.append(f"Topic of this session: {session.topic}")
        return "\n\n".join(sections)

    async def _record_reply(
        self,
        session_id: uuid.UUID,
        reply_id: uuid.UUID,
        profile: Profile,
        agent: AgentConfig,
        reply: AgentReply,
    ) -> None:
        cli = agent.driver is DriverType.CLI
        usage = MessageUsage(
            # A CLI reports no token counts we can trust: recorded as zero.
            input_tokens=0 if cli else reply.input_tokens,
            output_tokens=0 if cli else reply.output_tokens,
            cost_usd=float(reply.cost_usd or 0),
        )
        message = Message(
            id=reply_id,
            session_id=session_id,
            role=MessageRole.ASSISTANT,
            content=reply.text,
            usage=usage,
        )
        # One transaction: whoever sees the reply also sees its artifacts and the session's
        # new updated_at (clients poll for the reply).
        async with self._db.transaction() as conn:
            repo = self._repo.bind(conn)
            stored = await repo.save_message_next_sequence(message)
            artifacts = await record_artifacts(repo, session_id, reply.text, profile.working_dir)
            await touch_session(repo, session_id, driver_type=agent.driver.value)
            session_usage = await repo.get_session_usage(session_id)
        data = {"message_id": str(reply_id)}
        self._emit(
            session_id,
            EventType.BRAINSTORM_TEXT,
            "Brainstormer replied",
            {**data, "text": reply.text},
        )
        for artifact in artifacts:
            artifact_data = {**data, "artifact": artifact.model_dump(mode="json")}
            self._emit(
                session_id,
                EventType.BRAINSTORM_ARTIFACT_CREATED,
                f"Artifact recorded: {artifact.path}",
                artifact_data,
            )
        self._emit(
            session_id,
            EventType.BRAINSTORM_MESSAGE_COMPLETE,
            "Brainstormer message complete",
            {
                **data,
                "message": SessionMessage.of(stored).model_dump(mode="json"),
                "is_error": False,
                "session_usage": session_usage.model_dump() if session_usage else None,
            },
        )

    async def _record_failure(
        self, session_id: uuid.UUID, reply_id: uuid.UUID, reason: str, exc: Exception | None
    ) -> None:
        """Store a failed turn as an assistant message marked as an error, and emit it."""
        error_type = type(exc).__name__ if exc else "Interrupted"
        message = error_message(session_id, reply_id, reason, error_type)
        data: dict[str, Any] = {"message_id": str(reply_id), "is_error": True, "error": reason}
        try:
            async with self._db.transaction() as conn:
                repo = self._repo.bind(conn)
                stored = await repo.save_message_next_sequence(message)
                await touch_session(repo, session_id)
                usage = await repo.get_session_usage(session_id)
            data["message"] = SessionMessage.of(stored).model_dump(mode="json")
            data["session_usage"] = usage.model_dump() if usage else None
        except Exception:
            logger.exception("could not record the failed turn of session %s", session_id)
        self._emit(
            session_id,
            EventType.BRAINSTORM_MESSAGE_COMPLETE,
            message.content,
            data,
            level=EventLevel.ERROR,
        )

    # ------------------------------------------------------------------ handoff

    async def handoff(
        self,
        session_id: uuid.UUID,
        artifact_path: str,
        issue_title: str | None,
        issue_description: str | None,
    ) -> uuid.UUID:
        """Queue a workflow for one of the session's documents and complete the session.

        Returns:
            The id of the new (pending) workflow.

        Raises:
            BrainstormSessionNotFoundError: unknown session.
            BrainstormArtifactNotFoundError: the session has no artifact with that path.
            ValueError: the session's profile is gone, or the orchestrator refused the
                document (e.g. outside the worktree).
        """
        async with self._db.connection() as conn:
            repo = self._repo.bind(conn)
            session = await repo.get_session(session_id)
            if session is None:
                raise BrainstormSessionNotFoundError(session_id)
            artifacts = await repo.get_artifacts(session_id)
            artifact = next((a for a in artifacts if a.path == artifact_path), None)
            if artifact is None:
                raise BrainstormArtifactNotFoundError(session_id, artifact_path)
            profile = await self._profiles.bind(conn).get_profile(session.profile_id)
        if profile is None:
            raise ValueError(f"Profile {session.profile_id!r} not found")
        workflow_id = await self._orchestrator.queue_workflow(
            issue_id=f"brainstorm-{session_id}",
            worktree_path=profile.working_dir,
            profile=profile.name,
            task_title=issue_title or artifact.title or Path(artifact.path).stem,
            task_description=issue_description,
            artifact_path=artifact.path,
        )
        await touch_session(self._repo, session_id, status=SessionStatus.COMPLETED)
        self._emit(
            session_id,
            EventType.BRAINSTORM_SESSION_COMPLETED,
            "Brainstorming session handed off to a workflow",
            {"workflow_id": str(workflow_id), "artifact_path": artifact.path},
        )
        return workflow_id

    def _emit(
        self,
        session_id: uuid.UUID,
        event_type: EventType,
        message: str,
        data: dict[str, Any],
        *,
        level: EventLevel | None = None,
    ) -> None:
        self._bus.emit(brainstorm_event(session_id, event_type, message, data, level=level))
