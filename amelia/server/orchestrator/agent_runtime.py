"""The `AgentRuntime` a workflow's graph runs with: drivers, prompts and usage records.

Every agent call writes a `token_usage` row (a failure to write it is logged, never raised
into the run) and emits an `agent_message` event that is broadcast but not persisted.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from amelia.core.types import Profile
from amelia.drivers.base import AgentDriver, AgentReply, AgentRequest
from amelia.drivers.factory import build_driver
from amelia.server.database.repository import WorkflowRepository
from amelia.server.models.events import EventType
from amelia.server.models.tokens import TokenUsage, calculate_token_cost
from amelia.server.orchestrator.emitter import EventEmitter

logger = logging.getLogger(__name__)

# How much of a reply an agent_message event carries (the full text stays in the state).
_EVENT_EXCERPT_CHARS = 2000


class WorkflowAgentRuntime:
    """Runs agent turns for one workflow run; build one per run and `aclose()` it after."""

    def __init__(
        self,
        workflow_id: uuid.UUID,
        profile: Profile,
        prompts: dict[str, str],
        repository: WorkflowRepository,
        emitter: EventEmitter,
        worktree: Path | None = None,
    ) -> None:
        self._workflow_id = workflow_id
        self._profile = profile
        self._prompts = prompts
        self._repository = repository
        self._emitter = emitter
        self._worktree = worktree
        self._drivers: dict[str, AgentDriver] = {}

    def _driver(self, agent: str) -> AgentDriver:
        driver = self._drivers.get(agent)
        if driver is None:
            driver = build_driver(self._profile.get_agent_config(agent))
            self._drivers[agent] = driver
        return driver

    async def ask(self, agent: str, prompt_id: str, user_prompt: str, *, step: str) -> str:
        """Run one turn of `agent` with the resolved system prompt `prompt_id`."""
        if prompt_id not in self._prompts:
            raise ValueError(f"no prompt {prompt_id!r} was resolved for this workflow")
        reply = await self._driver(agent).run(
            AgentRequest(prompt=user_prompt, system=self._prompts[prompt_id], cwd=self._worktree)
        )
        await self._record_usage(agent, reply)
        await self._emitter.emit(
            self._workflow_id,
            EventType.AGENT_MESSAGE,
            reply.text[:_EVENT_EXCERPT_CHARS],
            agent=agent,
            data={"step": step, "model": reply.model},
        )
        return reply.text

    async def _record_usage(self, agent: str, reply: AgentReply) -> None:
        usage = TokenUsage(
            workflow_id=self._workflow_id,
            agent=agent,
            model=reply.model,
            input_tokens=reply.input_tokens,
            output_tokens=reply.output_tokens,
            cache_read_tokens=reply.cache_read_tokens,
            cache_creation_tokens=reply.cache_creation_tokens,
            cost_usd=Decimal(0),
            duration_ms=reply.duration_ms,
            num_turns=reply.num_turns,
            timestamp=datetime.now(UTC),
        )
        # The provider's own figure wins; otherwise price it from our table.
        cost = reply.cost_usd if reply.cost_usd is not None else calculate_token_cost(usage)
        usage = usage.model_copy(update={"cost_usd": cost})
        try:
            await self._repository.save_token_usage(usage)
        except Exception:
            logger.exception("could not record token usage of %s for %s", agent, self._workflow_id)

    async def aclose(self) -> None:
        """Close every driver this runtime opened."""
        drivers, self._drivers = list(self._drivers.values()), {}
        for driver in drivers:
            try:
                await driver.aclose()
            except Exception:
                logger.warning("closing a %s driver failed", type(driver).__name__, exc_info=True)
