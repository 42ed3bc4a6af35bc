"""Core domain types shared by agents, pipelines and the server: issues and profiles.

A `Profile` is what the `profiles` table stores (minus `retry`, which is never persisted and
always comes back as the defaults); `AgentConfig` is one entry of its `agents` JSONB column.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class TrackerType(StrEnum):
    """Where issues come from. Only `noop` is implemented; the others are kept for shape."""

    JIRA = "jira"
    GITHUB = "github"
    NOOP = "noop"


class DriverType(StrEnum):
    """How an agent talks to its model: a local CLI or an HTTP API."""

    CLI = "cli"
    API = "api"


class Issue(BaseModel):
    """A tracker issue, cached on the workflow row (`workflows.issue_cache`)."""

    id: str
    title: str
    description: str
    status: str = "open"


class AgentConfig(BaseModel):
    """One agent's driver, model and driver options (for example `base_url`, `command`)."""

    model_config = ConfigDict(frozen=True)

    driver: DriverType
    model: str
    options: dict[str, Any] = Field(default_factory=dict)


class RetryConfig(BaseModel):
    """Retry policy for transient agent failures (not persisted with the profile)."""

    max_retries: int = Field(default=3, ge=0, le=10)
    base_delay: float = Field(default=1.0, ge=0.1, le=30.0)
    max_delay: float = Field(default=60.0, ge=1.0, le=300.0)


class Profile(BaseModel):
    """A named configuration: tracker, working directory, plan location and agents."""

    model_config = ConfigDict(frozen=True)

    name: str
    tracker: TrackerType = TrackerType.NOOP
    working_dir: str
    plan_output_dir: str = "docs/plans"
    plan_path_pattern: str = "docs/plans/{date}-{issue_key}.md"
    retry: RetryConfig = Field(default_factory=RetryConfig)
    agents: dict[str, AgentConfig] = Field(default_factory=dict)

    def get_agent_config(self, agent_name: str) -> AgentConfig:
        """The configuration of one agent.

        Args:
            agent_name: e.g. `architect`, `developer`, `reviewer`.

        Returns:
            The agent's `AgentConfig`.

        Raises:
            ValueError: the profile does not configure that agent.
        """
        try:
            return self.agents[agent_name]
        except KeyError:
            configured = ", ".join(sorted(self.agents)) or "none"
            raise ValueError(
                f"Agent {agent_name!r} is not configured in profile {self.name!r} "
                f"(configured: {configured})"
            ) from None
