"""`OrchestratorService`: every workflow operation of the server (spec server.md 5.4).

State lives in the database, not in this process: each operation checks and changes a
workflow's status in one compare-and-set statement (losing a race gives `InvalidStateError`),
worktree exclusivity is the partial unique index, and `max_concurrent` is read from the
settings table on every start. Several processes may share the database: a run executes in
the process that claimed it (database/run_leases.py), under a `RunToken` whose fence guards
its writes; any process accepts commands, and the owner acts on a cancel. This process only
tracks the asyncio tasks of the runs it owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Collection, Coroutine
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from amelia.agents.prompts.resolver import PromptResolver
from amelia.core.types import Issue, Profile, TrackerType
from amelia.pipelines.parsing import ParsedPlan, parse_plan
from amelia.pipelines.state import DEFAULT_MAX_REVIEW_PASSES
from amelia.server.cluster.fencing import RunToken, running
from amelia.server.database.connection import (
    Database,
    DatabaseConnectionError,
    connection_lost,
)
from amelia.server.database.profile_repository import ProfileRepository
from amelia.server.database.prompt_repository import PromptRepository
from amelia.server.database.repository import WorkflowRepository
from amelia.server.database.run_leases import RunLeaseRepository, RunSignals
from amelia.server.database.settings_repository import SettingsRepository
from amelia.server.events.bus import EventBus
from amelia.server.exceptions import (
    ConcurrencyLimitError,
    FencedOutError,
    InvalidStateError,
    InvalidWorktreeError,
    WorkflowConflictError,
    WorkflowNotFoundError,
)
from amelia.server.models.events import EventType
from amelia.server.models.state import (
    PlanCache,
    ServerExecutionState,
    WorkflowStatus,
    WorkflowType,
)
from amelia.server.orchestrator.agent_runtime import WorkflowAgentRuntime
from amelia.server.orchestrator.emitter import EventEmitter
from amelia.server.orchestrator.runner import GraphRunner, initial_implementation_state
from amelia.server.orchestrator.worktree import (
    read_inside_worktree,
    validate_worktree,
)

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

S = WorkflowStatus
# Pauses between the attempts of the reads a run starts with (its row, profile, prompts). A
# killed connection or a short outage there is no fault of the workflow: failing it would
# leave it without a checkpoint, which no resume can start from.
START_READ_DELAYS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
TAKEOVER_REASON = (
    "The servers running this workflow stopped {count} times while running it; "
    "resume it to try again"
)
REVIEW_ISSUE_ID = "LOCAL-REVIEW"


class OrchestratorService:
    """Starts, pauses, resumes and stops workflows; one instance per server process."""

    def __init__(
        self,
        db: Database,
        saver: Any,
        bus: EventBus,
        *,
        runner: GraphRunner | None = None,
        process_id: uuid.UUID | None = None,
        lease_seconds: float = 30.0,
        max_takeovers: int = 3,
        relayed: bool = False,
    ) -> None:
        self._db = db
        self._saver = saver
        self._bus = bus
        self._repository = WorkflowRepository(db)
        self._settings = SettingsRepository(db)
        self._profiles = ProfileRepository(db)
        self._resolver = PromptResolver(PromptRepository(db))
        self._leases = RunLeaseRepository(db)
        self._signals = RunSignals(db)
        self._emitter = EventEmitter(self._repository, bus, relayed=relayed)
        self._runner = runner or GraphRunner(saver, self._emitter)
        self.process_id = process_id or uuid.uuid4()
        self.lease_seconds = lease_seconds
        self.max_takeovers = max_takeovers
        self.start_read_delays = START_READ_DELAYS
        # The runs this process owns: {workflow id: (its token, the task driving it)}.
        self._tasks: dict[uuid.UUID, tuple[RunToken, asyncio.Task[None]]] = {}
        # Runs claimed by a command (approve, replan) that prepares them before they start:
        # owned by this process already, so lease renewal must keep them.
        self._preparing: dict[uuid.UUID, RunToken] = {}
        self._releases: set[asyncio.Task[None]] = set()
        # Commands that claim a run (approve, replan, plan), carried through to the hand-off
        # even when their caller is cancelled (see `_carry_through`).
        self._commands: set[asyncio.Task[Any]] = set()
        # Set when a run of this process ends: a slot may be free for the claimer.
        self.run_ended = asyncio.Event()
        self.refused_writes = 0
        # False once shutdown began: no new claims, so released runs go to other processes.
        self.accepting = True
        # Serialises "count running, then create" within this process.
        self._start_lock = asyncio.Lock()

    @property
    def repository(self) -> WorkflowRepository:
        return self._repository

    @property
    def emitter(self) -> EventEmitter:
        return self._emitter

    # ----------------------------------------------------------------- helpers

    async def _get(self, workflow_id: uuid.UUID) -> ServerExecutionState:
        row = await self._repository.get(workflow_id)
        if row is None:
            raise WorkflowNotFoundError(workflow_id)
        return row

    async def _profile(self, name: str | None) -> Profile:
        if name:
            profile = await self._profiles.get_profile(name)
            if profile is None:
                raise ValueError(f"Profile {name!r} not found")
            return profile
        active = await self._profiles.get_active_profile()
        if active is None:
            raise ValueError("No active profile: create one and activate it, or pass a profile")
        return active

    async def _check_capacity(self) -> None:
        settings = await self._settings.get_server_settings()
        running = await self._repository.count_workflows(status=S.IN_PROGRESS)
        if running >= settings.max_concurrent:
            raise ConcurrencyLimitError(settings.max_concurrent, running)

    def _issue(
        self,
        profile: Profile,
        issue_id: str,
        task_title: str | None,
        task_description: str | None,
    ) -> Issue:
        if profile.tracker != TrackerType.NOOP:
            if task_title is not None:
                raise ValueError("task_title can only be used with the noop tracker")
            raise ValueError(
                f"tracker {profile.tracker.value!r} is not supported by this server; "
                "use a profile with the noop tracker"
            )
        return Issue(id=issue_id, title=task_title or issue_id, description=task_description or "")

    def _run(self, token: RunToken) -> None:
        """Drive a claimed run in a task of this process."""
        workflow_id = token.workflow_id
        self._preparing.pop(workflow_id, None)
        previous = self._tasks.get(workflow_id)
        if previous is not None:  # a stale run of ours (fenced out anyway): stop it
            previous[1].cancel()
        task = asyncio.create_task(self._execute(token), name=f"workflow-{workflow_id}")
        self._tasks[workflow_id] = (token, task)

        def forget(done: asyncio.Task[None]) -> None:
            entry = self._tasks.get(workflow_id)
            if entry is not None and entry[1] is done:
                del self._tasks[workflow_id]
            self.run_ended.set()
            # A run that stopped without its final write (cancelled, crashed) still holds
            # the row: give it up so another process need not wait for the lease to expire.
            release = asyncio.create_task(self._release_quietly(token))
            self._releases.add(release)
            release.add_done_callback(self._releases.discard)

        task.add_done_callback(forget)

    async def _release_quietly(self, token: RunToken) -> None:
        try:
            if await self._leases.release(self.process_id, token):
                await self._signals.announce_work()
        except Exception as exc:  # the lease expires by itself
            logger.info("could not release the run of %s: %s", token.workflow_id, exc)

    def _give_up(self, token: RunToken) -> None:
        """A claimed run that will not start here: stop renewing it and release it now, so
        that any process can claim it at once rather than when its lease expires."""
        if self._preparing.get(token.workflow_id) is token:
            del self._preparing[token.workflow_id]
        release = asyncio.create_task(self._release_quietly(token))
        self._releases.add(release)
        release.add_done_callback(self._releases.discard)

    async def _carry_through(self, command: Coroutine[Any, Any, _T]) -> _T:
        """Run a command that claims a run to its end even if the caller is cancelled.

        Between its claim and its hand-off to a task, a cancelled request (a client that
        went away) would leave the run owned here with nobody running it. So the command
        runs in a task of its own: the caller's cancellation stops the waiting, not the
        command, which still starts the run (or fails and releases it).
        """
        task = asyncio.create_task(command)
        self._commands.add(task)
        task.add_done_callback(self._commands.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_report_orphaned)  # nobody else will hear how it ended
            raise

    async def _read_to_start(self, read: Callable[[], Awaitable[_T]]) -> _T:
        """A read a run starts with, tried again while the database does not answer.

        Raises:
            The last error, when the database still does not answer after every pause of
            `start_read_delays` (the caller then leaves the run to be claimed again).
        """
        for delay in self.start_read_delays:
            try:
                return await read()
            except Exception as exc:
                if not database_unreachable(exc):
                    raise
                logger.warning("run start: %s; reading again in %.1f s", exc, delay)
            await asyncio.sleep(delay)
        return await read()

    async def _max_concurrent(self) -> int:
        return (await self._settings.get_server_settings()).max_concurrent

    async def _claim_here(self, workflow_id: uuid.UUID) -> bool:
        """Claim a workflow that wants to run and run it here, when a slot is free.

        Otherwise it waits for a slot (any process's claimer takes it then).
        """
        token = None
        if self.accepting:
            token = await self._leases.claim(
                workflow_id, self.process_id, self.lease_seconds, await self._max_concurrent()
            )
        if token is None:
            await self._signals.announce_work()
            return False
        self._run(token)
        return True

    async def claim_runnable(self, limit: int = 8) -> list[RunToken]:
        """Claim up to `limit` runs that want a process (new, queued-then-started, or left
        by a process whose lease expired) within `max_concurrent`, and run them here."""
        if not self.accepting:
            return []
        tokens = await self._leases.claim_runnable(
            self.process_id, self.lease_seconds, await self._max_concurrent(), limit
        )
        for token in tokens:
            self._run(token)
        return tokens

    async def renew_leases(self) -> None:
        """Extend the leases of this process's runs; stop the runs it no longer owns."""
        # Judge only the runs that existed before the renewal was sent: a run claimed while
        # it was on its way is not in its answer, and must not look lost.
        running = {wid: token for wid, (token, task) in self._tasks.items() if not task.done()}
        renewed = await self._leases.renew(
            self.process_id, self.lease_seconds, [*running, *self._preparing]
        )
        for workflow_id, token in running.items():
            entry = self._tasks.get(workflow_id)
            if renewed.get(workflow_id) == token.fence or entry is None or entry[0] is not token:
                continue
            # Taken over, cancelled, or just finished (its final write gave the row up).
            logger.info(
                "workflow %s: this process no longer owns the run; stopping it", workflow_id
            )
            entry[1].cancel()

    def stop_local_run(self, workflow_id: uuid.UUID) -> bool:
        """Cancel this process's task of a run (a cancel command from any process)."""
        entry = self._tasks.get(workflow_id)
        if entry is None or entry[1].done():
            return False
        entry[1].cancel()
        return True

    async def release_runs(self) -> list[uuid.UUID]:
        """Give up every run of this process (clean shutdown): others take them at once."""
        released = await self._leases.release_all(self.process_id)
        if released:
            await self._signals.announce_work()
        return released

    async def _runtime(self, row: ServerExecutionState) -> WorkflowAgentRuntime:
        profile = await self._profile(row.profile_id)
        resolved = await self._resolver.get_all_active()
        try:
            await self._resolver.record_for_workflow(row.id, resolved.values())
        except Exception:
            logger.exception("could not record the prompt versions of %s", row.id)
        return WorkflowAgentRuntime(
            row.id,
            profile.model_copy(update={"working_dir": row.worktree_path}),
            {pid: prompt.content for pid, prompt in resolved.items()},
            self._repository,
            self._emitter,
            Path(row.worktree_path),
        )

    # --------------------------------------------------------- running graphs

    async def _execute(self, token: RunToken) -> None:
        """Run a claimed workflow under its token; a fenced-out run just stops."""
        with running(token):
            try:
                if token.takeovers > self.max_takeovers:
                    reason = TAKEOVER_REASON.format(count=token.takeovers)
                    await self._fail(token.workflow_id, reason, fence=token.fence)
                    return
                await self._execute_run(token.workflow_id, token.fence, planning=token.planning)
            except FencedOutError as exc:
                self.refused_writes += 1
                logger.warning("%s; the run stops here", exc)
            except Exception as exc:
                if database_unreachable(exc):
                    # Released when this task ends: claimed again (here or elsewhere) and
                    # run from where it is, once the database answers.
                    logger.warning(
                        "workflow %s: the database does not answer (%s); the run waits for "
                        "the next claim",
                        token.workflow_id,
                        exc,
                    )
                    return
                # A final write failed (database gone): the run is released when this task
                # ends, and resumes from its checkpoint wherever it is claimed next.
                logger.exception("workflow %s: the run stopped on an error", token.workflow_id)
            finally:
                with contextlib.suppress(Exception):
                    await self._signals.announce_work()

    async def _execute_run(self, workflow_id: uuid.UUID, fence: int, *, planning: bool) -> None:
        """Run a workflow's graph with retries; record how it ended."""
        try:
            row = await self._read_to_start(partial(self._get, workflow_id))
            profile = await self._read_to_start(partial(self._profile, row.profile_id))
        except Exception as exc:
            if database_unreachable(exc):
                raise  # not the workflow's fault: it runs on the next claim
            await self._fail(
                workflow_id, f"Cannot run workflow: {exc}", planning=planning, fence=fence
            )
            return
        retry = profile.retry
        attempt = 0
        while True:
            runtime = await self._read_to_start(partial(self._runtime, row))
            try:
                result = await self._runner.run(row, runtime, self._initial(row))
                break
            except (asyncio.CancelledError, FencedOutError):
                raise
            except Exception as exc:
                if attempt < retry.max_retries and is_transient(exc):
                    attempt += 1
                    delay = min(retry.base_delay * 2 ** (attempt - 1), retry.max_delay)
                    logger.warning(
                        "workflow %s: %s; retry %d in %.1fs", workflow_id, exc, attempt, delay
                    )
                    await asyncio.sleep(delay)
                    continue
                await self._fail(
                    workflow_id, f"{type(exc).__name__}: {exc}", planning=planning, fence=fence
                )
                return
            finally:
                await runtime.aclose()
        if result.blocked:
            await self._block(row, result.values, planning=planning, fence=fence)
            return
        data = {"outcome": result.outcome}
        await self._emitter.emit(
            workflow_id, EventType.WORKFLOW_COMPLETED, "Workflow completed", data=data
        )
        if result.outcome == "review_passes_exhausted":
            await self._emitter.emit(
                workflow_id,
                EventType.SYSTEM_WARNING,
                "The reviewer did not approve within the allowed review passes",
            )
        # A completion beats a concurrent cancel (the status rule of set_status).
        await self._repository.transition(
            workflow_id, (S.IN_PROGRESS, S.CANCELLED), S.COMPLETED, fence=fence
        )

    def _initial(self, row: ServerExecutionState) -> dict[str, Any]:
        if row.workflow_type == WorkflowType.REVIEW:
            issue = row.issue_cache or {}
            return {
                "workflow_id": str(row.id),
                "diff_content": issue.get("description", ""),
                "review_iteration": 0,
                "max_review_passes": DEFAULT_MAX_REVIEW_PASSES,
            }
        return initial_implementation_state(row)

    async def _block(
        self, row: ServerExecutionState, values: dict[str, Any], *, planning: bool, fence: int
    ) -> None:
        plan = PlanCache.from_checkpoint_values(values)
        try:
            await self._repository.update_plan_cache(row.id, plan, fence=fence)
        except FencedOutError:
            raise
        except Exception:
            logger.exception("could not store the plan of %s", row.id)
        expected = (S.PENDING,) if planning else (S.IN_PROGRESS,)
        moved = await self._repository.transition(row.id, expected, S.BLOCKED, fence=fence)
        if moved is None:
            logger.info("workflow %s changed state while planning; not blocking it", row.id)
            return
        await self._emitter.emit(
            row.id,
            EventType.APPROVAL_REQUIRED,
            "Plan ready for approval",
            data={"goal": plan.goal, "total_tasks": plan.total_tasks},
        )

    async def _fail(
        self,
        workflow_id: uuid.UUID,
        reason: str,
        *,
        planning: bool = False,
        fence: int | None = None,
    ) -> None:
        await self._emitter.emit(
            workflow_id, EventType.WORKFLOW_FAILED, reason, data={"recoverable": not planning}
        )
        expected = (S.PENDING,) if planning else (S.IN_PROGRESS, S.PENDING, S.BLOCKED)
        try:
            await self._repository.transition(
                workflow_id, expected, S.FAILED, failure_reason=reason, fence=fence
            )
        except FencedOutError:
            raise
        except Exception:
            logger.exception("could not mark workflow %s failed", workflow_id)

    # ------------------------------------------------------ public operations

    async def _create_and_run(
        self,
        *,
        issue: Issue,
        worktree: str,
        profile: Profile,
        workflow_type: WorkflowType = WorkflowType.FULL,
        issue_cache: dict[str, Any] | None = None,
    ) -> uuid.UUID:
        workflow_id = uuid.uuid4()
        now = datetime.now(UTC)
        row = ServerExecutionState(
            id=workflow_id,
            issue_id=issue.id,
            worktree_path=worktree,
            workflow_type=workflow_type,
            profile_id=profile.name,
            issue_cache=issue_cache or issue.model_dump(mode="json"),
            workflow_status=S.IN_PROGRESS,
            created_at=now,
            started_at=now,
        )
        async with self._start_lock:
            await self._check_capacity()
            # The partial unique index refuses a second running workflow on the worktree.
            await self._repository.create(row)
        await self._emitter.emit(
            workflow_id, EventType.WORKFLOW_STARTED, "Workflow started", data={"issue_id": issue.id}
        )
        await self._claim_here(workflow_id)
        return workflow_id

    async def start_workflow(
        self,
        issue_id: str,
        worktree_path: str,
        profile: str | None = None,
        driver: str | None = None,
        task_title: str | None = None,
        task_description: str | None = None,
    ) -> uuid.UUID:
        """Create a workflow and run it now (it pauses when its plan needs approval)."""
        worktree = validate_worktree(worktree_path, require_git=True)
        chosen = await self._profile(profile)
        issue = self._issue(chosen, issue_id, task_title, task_description)
        return await self._create_and_run(issue=issue, worktree=worktree, profile=chosen)

    async def start_review_workflow(
        self, diff_content: str, worktree_path: str, profile: str | None = None
    ) -> uuid.UUID:
        """Create a review workflow for a diff and run it now."""
        worktree = validate_worktree(worktree_path, require_git=False)
        chosen = await self._profile(profile)
        issue = Issue(id=REVIEW_ISSUE_ID, title="Local review", description=diff_content)
        return await self._create_and_run(
            issue=issue, worktree=worktree, profile=chosen, workflow_type=WorkflowType.REVIEW
        )

    async def queue_workflow(
        self,
        issue_id: str,
        worktree_path: str,
        profile: str | None = None,
        task_title: str | None = None,
        task_description: str | None = None,
        *,
        artifact_path: str | None = None,
        plan_file: str | None = None,
        plan_content: str | None = None,
    ) -> uuid.UUID:
        """Create a pending workflow (no run yet), optionally with a design or a plan."""
        worktree = validate_worktree(worktree_path, require_git=True)
        chosen = await self._profile(profile)
        issue = self._issue(chosen, issue_id, task_title, task_description)
        if artifact_path:
            design = read_inside_worktree(worktree, artifact_path)
            issue = issue.model_copy(
                update={"description": f"{issue.description}\n\n{design}".strip()}
            )
        plan_cache = None
        if plan_file or plan_content:
            if plan_file and plan_content:
                raise ValueError("give plan_file or plan_content, not both")
            plan_cache, _ = external_plan(worktree, plan_file, plan_content)
        workflow_id = uuid.uuid4()
        await self._repository.create(
            ServerExecutionState(
                id=workflow_id,
                issue_id=issue_id,
                worktree_path=worktree,
                profile_id=chosen.name,
                issue_cache=issue.model_dump(mode="json"),
                plan_cache=plan_cache,
                workflow_status=S.PENDING,
                created_at=datetime.now(UTC),
            )
        )
        await self._emitter.emit(
            workflow_id,
            EventType.WORKFLOW_CREATED,
            "Workflow queued",
            data={"issue_id": issue_id, "queued": True},
        )
        return workflow_id

    async def queue_and_plan_workflow(
        self,
        issue_id: str,
        worktree_path: str,
        profile: str | None = None,
        task_title: str | None = None,
        task_description: str | None = None,
    ) -> uuid.UUID:
        """Queue a workflow and let the architect plan it now; it blocks for approval."""
        workflow_id = await self.queue_workflow(
            issue_id, worktree_path, profile, task_title, task_description
        )
        await self._carry_through(self._plan_queued(workflow_id))
        return workflow_id

    async def _plan_queued(self, workflow_id: uuid.UUID) -> None:
        token = await self._leases.claim_transition(
            workflow_id, self.process_id, self.lease_seconds, (S.PENDING,), S.PENDING
        )
        if token is None:  # started or cancelled in the meantime: nothing to plan
            return
        self._preparing[workflow_id] = token
        try:
            await self._emitter.emit(
                workflow_id,
                EventType.STAGE_STARTED,
                "Planning",
                data={"stage": "architect", "planning": True},
            )
        except BaseException:
            self._give_up(token)
            raise
        self._run(token)

    async def start_pending_workflow(
        self, workflow_id: uuid.UUID, *, check_capacity: bool = True, claim: bool = True
    ) -> None:
        """Start a queued workflow: it runs here when a slot is free, else when one frees
        (on whichever process claims it first).

        Args:
            check_capacity: refuse with `ConcurrencyLimitError` when `max_concurrent`
                workflows are already in progress (a batch start queues instead).
            claim: try to claim it for this process now (a batch leaves it to the claimers).
        """
        row = await self._get(workflow_id)
        if row.workflow_status != S.PENDING:
            raise InvalidStateError(
                f"Workflow is {row.workflow_status.value}, not pending",
                workflow_id,
                row.workflow_status,
            )
        if await self._signals.is_planning(workflow_id):
            raise WorkflowConflictError("The architect is still planning this workflow")
        async with self._start_lock:
            if check_capacity:
                await self._check_capacity()
            moved = await self._repository.transition(
                workflow_id, (S.PENDING,), S.IN_PROGRESS, set_started_at=True
            )
        if moved is None:
            current = (await self._get(workflow_id)).workflow_status
            raise InvalidStateError(
                f"Workflow is {current.value}, not pending", workflow_id, current
            )
        await self._emitter.emit(workflow_id, EventType.WORKFLOW_STARTED, "Workflow started")
        if claim:
            await self._claim_here(workflow_id)

    async def start_batch_workflows(
        self, workflow_ids: list[uuid.UUID] | None = None, worktree_path: str | None = None
    ) -> tuple[list[uuid.UUID], dict[uuid.UUID, str]]:
        """Start several queued workflows; returns (started ids, {id: error message})."""
        if workflow_ids is None:
            pending = await self._repository.find_by_status([S.PENDING])
            workflow_ids = [
                row.id
                for row in sorted(pending, key=lambda r: r.created_at)
                if worktree_path is None or row.worktree_path == worktree_path
            ]
        started: list[uuid.UUID] = []
        errors: dict[uuid.UUID, str] = {}
        for workflow_id in workflow_ids:
            try:
                # Started means queued to run: claims keep max_concurrent across processes.
                await self.start_pending_workflow(workflow_id, check_capacity=False, claim=False)
                started.append(workflow_id)
                if len(started) % 50 == 1:
                    self.run_ended.set()  # wake this process's claimer early on
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                errors[workflow_id] = str(exc)
        if started:
            # Every process's claimer takes them, within max_concurrent.
            self.run_ended.set()
            await self._signals.announce_work()
            if not self.accepting:
                return started, errors
            # Without a supervisor (tests, tools) nothing else would claim them.
            await self.claim_runnable()
        return started, errors

    async def _cas(
        self,
        workflow_id: uuid.UUID,
        expected: Collection[WorkflowStatus],
        target: WorkflowStatus,
        action: str,
        **kwargs: Any,
    ) -> ServerExecutionState:
        moved = await self._repository.transition(workflow_id, expected, target, **kwargs)
        if moved is None:
            current = (await self._get(workflow_id)).workflow_status
            wanted = " or ".join(s.value for s in expected)
            raise InvalidStateError(
                f"Cannot {action}: workflow is {current.value}, not {wanted}", workflow_id, current
            )
        return moved

    async def _claim_cas(
        self,
        workflow_id: uuid.UUID,
        expected: Collection[WorkflowStatus],
        target: WorkflowStatus,
        action: str,
    ) -> RunToken:
        """Compare-and-set the status and claim the run for this process in one statement."""
        token = await self._leases.claim_transition(
            workflow_id, self.process_id, self.lease_seconds, expected, target
        )
        if token is None:
            current = (await self._get(workflow_id)).workflow_status
            wanted = " or ".join(s.value for s in expected)
            raise InvalidStateError(
                f"Cannot {action}: workflow is {current.value}, not {wanted}", workflow_id, current
            )
        self._preparing[workflow_id] = token
        return token

    async def approve_workflow(self, workflow_id: uuid.UUID) -> None:
        """Approve a blocked plan; the run continues in a tracked task of this process.

        The approving process claims the run together with the status change, so no other
        process starts it before the approval is in the checkpoint. Carried through when the
        caller is cancelled: a run started without the approval would end the graph there.
        """
        await self._carry_through(self._approve(workflow_id))

    async def _approve(self, workflow_id: uuid.UUID) -> None:
        token = await self._claim_cas(workflow_id, (S.BLOCKED,), S.IN_PROGRESS, "approve")
        try:
            await self._emitter.emit(workflow_id, EventType.APPROVAL_GRANTED, "Plan approved")
            row = await self._get(workflow_id)
            with running(token):
                await self._runner.set_approval(row, True)
        except BaseException as exc:
            self._give_up(token)
            if isinstance(exc, Exception):
                await self._fail(workflow_id, f"Could not record the approval: {exc}")
            raise
        self._run(token)

    async def reject_workflow(self, workflow_id: uuid.UUID, feedback: str) -> None:
        """Reject a blocked plan: the workflow fails with the feedback as its reason."""
        row = await self._cas(
            workflow_id, (S.BLOCKED,), S.FAILED, "reject", failure_reason=feedback
        )
        await self._emitter.emit(
            workflow_id, EventType.APPROVAL_REJECTED, "Plan rejected", data={"feedback": feedback}
        )
        try:
            await self._runner.set_approval(row, False, feedback)
        except Exception:
            logger.exception("could not record the rejection of %s in its checkpoint", workflow_id)

    async def cancel_workflow(self, workflow_id: uuid.UUID, reason: str | None = None) -> None:
        """Cancel a pending, running or blocked workflow and stop its task here."""
        await self._cas(
            workflow_id,
            (S.PENDING, S.IN_PROGRESS, S.BLOCKED),
            S.CANCELLED,
            "cancel",
            failure_reason=reason,
        )
        if not self.stop_local_run(workflow_id):
            # The run may be owned by another process: its owner stops it on this notice
            # (or, at the latest, when its lease renewal finds the run no longer its own).
            try:
                await self._signals.announce_cancel(workflow_id)
            except Exception:
                logger.exception("could not notify the owner of %s of the cancel", workflow_id)
        await self._emitter.emit(
            workflow_id, EventType.WORKFLOW_CANCELLED, reason or "Workflow cancelled"
        )

    async def resume_workflow(self, workflow_id: uuid.UUID) -> ServerExecutionState:
        """Resume a failed workflow from its last checkpoint."""
        row = await self._get(workflow_id)
        if row.workflow_status != S.FAILED:
            raise InvalidStateError(
                f"Cannot resume: workflow is {row.workflow_status.value}, not failed",
                workflow_id,
                row.workflow_status,
            )
        try:
            has_checkpoint = await self._runner.has_checkpoint(row)
        except Exception as exc:
            raise InvalidStateError(
                f"Cannot resume: the checkpoint could not be read ({exc})",
                workflow_id,
                row.workflow_status,
            ) from exc
        if not has_checkpoint:
            raise InvalidStateError(
                "Cannot resume: the workflow has no checkpoint", workflow_id, row.workflow_status
            )
        async with self._start_lock:
            await self._check_capacity()
            moved = await self._cas(
                workflow_id, (S.FAILED,), S.IN_PROGRESS, "resume", clear_completion=True
            )
        await self._emitter.emit(
            workflow_id, EventType.WORKFLOW_STARTED, "Workflow resumed", data={"resumed": True}
        )
        await self._claim_here(workflow_id)
        return moved

    async def set_workflow_plan(
        self,
        workflow_id: uuid.UUID,
        plan_file: str | None = None,
        plan_content: str | None = None,
        force: bool = False,
    ) -> dict[str, Any]:
        """Give a queued workflow an external plan; returns goal, key files and task count."""
        if bool(plan_file) == bool(plan_content):
            raise ValueError("give exactly one of plan_file and plan_content")
        row = await self._get(workflow_id)
        if row.workflow_status != S.PENDING:
            raise InvalidStateError(
                f"Cannot set a plan: workflow is {row.workflow_status.value}, not pending",
                workflow_id,
                row.workflow_status,
            )
        if await self._signals.is_planning(workflow_id):
            raise WorkflowConflictError("The architect is already planning this workflow")
        existing = row.plan_cache
        if existing and (existing.plan_markdown or existing.plan_path) and not force:
            raise WorkflowConflictError("The workflow already has a plan; use force to replace it")
        plan_cache, parsed = external_plan(row.worktree_path, plan_file, plan_content)
        await self._repository.update_plan_cache(workflow_id, plan_cache)
        await self._emitter.emit(
            workflow_id,
            EventType.AGENT_MESSAGE,
            "External plan set",
            data={"total_tasks": parsed.total_tasks},
        )
        return {
            "goal": parsed.goal,
            "key_files": parsed.key_files,
            "total_tasks": parsed.total_tasks,
        }

    async def replan_workflow(self, workflow_id: uuid.UUID) -> None:
        """Throw away a blocked plan and let the architect plan again (carried through when
        the caller is cancelled, as approve is)."""
        await self._carry_through(self._replan(workflow_id))

    async def _replan(self, workflow_id: uuid.UUID) -> None:
        row = await self._get(workflow_id)
        if row.profile_id is None:
            raise InvalidStateError(
                "Cannot replan: the workflow has no profile", workflow_id, row.workflow_status
            )
        await self._profile(row.profile_id)  # a missing profile is a ValueError; status untouched
        # Claimed with the status change: nobody plans it before the old plan is gone.
        token = await self._claim_cas(workflow_id, (S.BLOCKED,), S.PENDING, "replan")
        try:
            try:
                await self._saver.adelete_thread(str(workflow_id))
            except Exception:
                logger.exception("could not delete the checkpoint of %s to replan", workflow_id)
            await self._repository.update_plan_cache(workflow_id, PlanCache(), fence=token.fence)
            await self._emitter.emit(
                workflow_id,
                EventType.STAGE_STARTED,
                "Replanning",
                data={"stage": "architect", "replan": True},
            )
        except BaseException:
            self._give_up(token)  # not started here: any process may plan it
            raise
        self._run(token)

    async def recover_interrupted_workflows(self) -> list[uuid.UUID]:
        """At start-up: claim the runs whose owner's lease expired (a process that died,
        this one before a restart included) and resume them from their checkpoints.

        Runs of live processes are never touched; the claimer picks up the rest later.
        """
        return [token.workflow_id for token in await self.claim_runnable()]

    def get_active_workflows(self) -> list[uuid.UUID]:
        """Ids of the workflows this process is running or planning right now."""
        return [wid for wid, (_token, task) in self._tasks.items() if not task.done()]

    async def wait_idle(self, timeout: float | None = None) -> None:
        """Wait until every tracked task of this process has finished (tests, shutdown)."""
        tasks = [task for _token, task in self._tasks.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def cancel_all_workflows(self, timeout: float = 5.0) -> None:
        """At shutdown: stop this process's runs and hand them to the other processes
        (statuses stay; a run resumes from its checkpoint wherever it is claimed next)."""
        self.accepting = False
        if self._commands:  # an approve on its way hands its run over first
            await asyncio.wait(list(self._commands), timeout=timeout)
        tasks = [task for _token, task in self._tasks.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        try:
            await self.release_runs()
        except Exception:
            logger.exception("could not release the runs of this process")


def external_plan(
    worktree: str, plan_file: str | None, plan_content: str | None
) -> tuple[PlanCache, ParsedPlan]:
    """A user-given plan (a file inside the worktree, or text), parsed strictly, as a cache."""
    text = plan_content if plan_content else read_inside_worktree(worktree, str(plan_file))
    parsed = parse_plan(text)
    cache = PlanCache(
        goal=parsed.goal,
        plan_markdown=parsed.markdown,
        plan_path=str(plan_file) if plan_file else None,
        total_tasks=parsed.total_tasks,
        current_task_index=0,
    )
    return cache, parsed


def _report_orphaned(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("a command whose caller left failed: %r", task.exception())


def database_unreachable(exc: BaseException) -> bool:
    """The database did not answer (connection lost, outage, timeout, no free connection):
    worth trying again later, never a reason to fail a workflow."""
    return isinstance(
        exc, DatabaseConnectionError | TimeoutError | PoolTimeoutError
    ) or connection_lost(exc)


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: timeouts, dropped connections, provider overload."""
    from amelia.drivers.base import DriverTransientError

    return isinstance(exc, DriverTransientError | TimeoutError | ConnectionError)


__all__ = ["InvalidWorktreeError", "OrchestratorService", "database_unreachable", "is_transient"]
