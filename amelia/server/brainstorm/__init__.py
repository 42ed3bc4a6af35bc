"""Brainstorming: design conversations with a profile's `brainstormer` agent.

`service.BrainstormService` runs them. This module holds what the service and the routes
share: the errors, the artifact convention, session bookkeeping and brainstorm events.

Artifact convention: the system prompt asks the agent to name each document it wrote on a
line of its own, `ARTIFACT: <path> | <title>`; the type (design, adr, spec, readme or
document) is inferred from the path. Brainstorm events go to the bus only: `workflow_log`
rows belong to workflows.
"""

from __future__ import annotations

import posixpath
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from amelia.server.database.brainstorm_repository import BrainstormRepository
from amelia.server.models.brainstorm import Artifact, SessionStatus
from amelia.server.models.events import EventDomain, EventLevel, EventType, WorkflowEvent

AGENT = "brainstormer"


class BrainstormSessionNotFoundError(LookupError):
    """No brainstorming session with this id."""

    def __init__(self, session_id: uuid.UUID) -> None:
        self.session_id = session_id
        super().__init__(f"Brainstorming session not found: {session_id}")


class BrainstormArtifactNotFoundError(LookupError):
    """The session has no artifact with this path."""

    def __init__(self, session_id: uuid.UUID, path: str) -> None:
        self.session_id = session_id
        self.path = path
        super().__init__(f"Artifact {path!r} does not belong to session {session_id}")


class BrainstormServiceStoppedError(RuntimeError):
    """The service is stopping (or not started) and takes no new turns."""


# --- the artifact convention --------------------------------------------------------------

ARTIFACT_INSTRUCTIONS = (
    "When you have written a document to a file, name it on a line of its own, exactly:\n"
    "ARTIFACT: <path relative to the repository root> | <title>\n"
    "The server records the document so that it can be handed off to a workflow."
)
_ARTIFACT_LINE = re.compile(
    r"^[ \t>*-]*ARTIFACT:[ \t]*(?P<path>[^|\n]+?)[ \t]*(?:\|[ \t]*(?P<title>[^\n]*?))?[ \t]*$",
    re.MULTILINE,
)
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True, slots=True)
class ArtifactReference:
    """A document an agent's reply names: its path and optional title."""

    path: str
    title: str | None


def parse_artifacts(text: str, working_dir: str) -> list[ArtifactReference]:
    """The documents a reply names with `ARTIFACT: <path> | <title>` lines, in order.

    Paths are normalised; a path outside `working_dir` (absolute or via `..`) is ignored.
    """
    root = posixpath.normpath(working_dir)
    found: list[ArtifactReference] = []
    for match in _ARTIFACT_LINE.finditer(text):
        path = match["path"].strip().strip("`'\"").strip()
        if not path or "\x00" in path:
            continue
        path = posixpath.normpath(path)
        target = path if posixpath.isabs(path) else posixpath.join(root, path)
        if posixpath.commonpath([root, posixpath.normpath(target)]) != root or target == root:
            continue
        title = (match["title"] or "").strip().strip("`").strip() or None
        found.append(ArtifactReference(path=path, title=title))
    return found


def artifact_type(path: str) -> str:
    """design, adr, spec, readme or document, guessed from the path's directories and name."""
    pure = PurePosixPath(path.lower())
    name_words = set(_WORD.findall(pure.stem))
    dir_words = {word for part in pure.parts[:-1] for word in _WORD.findall(part)}
    words = name_words | dir_words
    if pure.name.startswith("readme"):
        return "readme"
    if words & {"adr", "adrs", "decisions"}:
        return "adr"
    if words & {"spec", "specs", "specification", "specifications", "rfc"}:
        return "spec"
    if words & {"design", "designs", "plan", "plans", "brainstorm", "brainstorms"}:
        return "design"
    return "document"


async def record_artifacts(
    repo: BrainstormRepository, session_id: uuid.UUID, text: str, working_dir: str
) -> list[Artifact]:
    """Store the documents a reply names that the session does not have yet.

    Args:
        repo: the repository (bound to the caller's transaction, usually).
        session_id: the session.
        text: the agent's reply.
        working_dir: the profile's working directory (paths outside it are ignored).

    Returns:
        The artifacts stored, in the order the reply names them.
    """
    references = parse_artifacts(text, working_dir)
    if not references:
        return []
    known = {artifact.path for artifact in await repo.get_artifacts(session_id)}
    saved: list[Artifact] = []
    for reference in references:
        if reference.path in known:
            continue
        known.add(reference.path)
        artifact = Artifact(
            session_id=session_id,
            type=artifact_type(reference.path),
            path=reference.path,
            title=reference.title,
        )
        await repo.save_artifact(artifact)
        saved.append(artifact)
    return saved


async def touch_session(
    repo: BrainstormRepository,
    session_id: uuid.UUID,
    *,
    driver_type: str | None = None,
    status: SessionStatus | None = None,
) -> None:
    """Set a session's `updated_at` to now (and its driver type or status when given)."""
    # Re-read just before writing so a status set meanwhile (a handoff) is not overwritten by a
    # stale copy: `update_session` writes every mutable column. A guarded single UPDATE in the
    # repository would close the remaining window.
    current = await repo.get_session(session_id)
    if current is None:
        return
    changes: dict[str, Any] = {"updated_at": datetime.now(UTC)}
    if driver_type is not None:
        changes["driver_type"] = driver_type
    if status is not None:
        changes["status"] = status
    await repo.update_session(current.model_copy(update=changes))


def brainstorm_event(
    session_id: uuid.UUID,
    event_type: EventType,
    message: str,
    data: dict[str, Any],
    *,
    level: EventLevel | None = None,
) -> WorkflowEvent:
    """A brainstorm-domain event (its `workflow_id` is the session id; never persisted)."""
    return WorkflowEvent(
        id=uuid.uuid4(),
        domain=EventDomain.BRAINSTORM,
        workflow_id=session_id,
        sequence=0,
        timestamp=datetime.now(UTC),
        agent=AGENT,
        event_type=event_type,
        level=level,
        message=message,
        data=data,
        is_error=level is EventLevel.ERROR,
    )
