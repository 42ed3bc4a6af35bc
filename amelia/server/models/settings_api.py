"""Request and response bodies of `/api/settings`, `/api/profiles...` and `/api/config`.

Request bodies forbid unknown fields (a typo answers 422 instead of being silently ignored)
and refuse NUL characters, which PostgreSQL cannot store in TEXT or JSONB.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from amelia.core.types import AgentConfig, DriverType, Profile, TrackerType
from amelia.server.database.settings_repository import ServerSettings

PROFILE_ID_PATTERN = r"^[a-z0-9_-]+$"
PROFILE_ID_MAX_LENGTH = 100


def refuse_nul(value: str) -> str:
    """Refuse a string PostgreSQL cannot store (it has a NUL character)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _refuse_nul_deep(value: Any) -> Any:
    # JSONB refuses "\u0000" anywhere, keys included.
    if isinstance(value, str):
        refuse_nul(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_nul_deep(key)
            _refuse_nul_deep(item)
    elif isinstance(value, list):
        for item in value:
            _refuse_nul_deep(item)
    return value


ProfileId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=PROFILE_ID_MAX_LENGTH, pattern=PROFILE_ID_PATTERN),
]
"""A profile name: lowercase letters, digits, `-` and `_`."""

NonEmptyText = Annotated[str, StringConstraints(min_length=1), AfterValidator(refuse_nul)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- settings ---------------------------------------------------------------------------------

_Timeout = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class ServerSettingsResponse(BaseModel):
    """The server settings (no timestamps)."""

    log_retention_days: int
    checkpoint_retention_days: int
    websocket_idle_timeout_seconds: float
    workflow_start_timeout_seconds: float
    max_concurrent: int
    stream_tool_results: bool

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> ServerSettingsResponse:
        """The response for stored settings."""
        return cls.model_validate(settings.model_dump(exclude={"created_at", "updated_at"}))


class ServerSettingsUpdate(_Request):
    """`PUT /api/settings`: every field optional; null means "leave unchanged"."""

    # Strict ints: `true` or `"5"` as a day count is a client bug, not a value to coerce.
    log_retention_days: Annotated[int, Field(strict=True, ge=1)] | None = None
    checkpoint_retention_days: Annotated[int, Field(strict=True, ge=-1)] | None = None
    websocket_idle_timeout_seconds: _Timeout | None = None
    workflow_start_timeout_seconds: _Timeout | None = None
    max_concurrent: Annotated[int, Field(strict=True, ge=1, le=100)] | None = None
    stream_tool_results: Annotated[bool, Field(strict=True)] | None = None

    def changes(self) -> dict[str, Any]:
        """The fields to store (null fields dropped)."""
        return self.model_dump(exclude_none=True)


# --- profiles ---------------------------------------------------------------------------------


class AgentConfigBody(_Request):
    """One agent of a profile: driver `api` or `cli`, model, driver options."""

    driver: DriverType
    model: NonEmptyText
    options: Annotated[dict[str, Any], AfterValidator(_refuse_nul_deep)] = Field(
        default_factory=dict
    )

    def to_agent_config(self) -> AgentConfig:
        """The domain `AgentConfig`."""
        return AgentConfig(driver=self.driver, model=self.model, options=self.options)


class ProfileCreate(_Request):
    """`POST /api/profiles`: a new (inactive) profile."""

    id: ProfileId
    tracker: TrackerType = TrackerType.NOOP
    working_dir: NonEmptyText
    plan_output_dir: NonEmptyText = "docs/plans"
    plan_path_pattern: NonEmptyText = "docs/plans/{date}-{issue_key}.md"
    agents: dict[NonEmptyText, AgentConfigBody] = Field(default_factory=dict)

    def to_profile(self) -> Profile:
        """The domain `Profile` to store."""
        return Profile(
            name=self.id,
            tracker=self.tracker,
            working_dir=self.working_dir,
            plan_output_dir=self.plan_output_dir,
            plan_path_pattern=self.plan_path_pattern,
            agents={name: agent.to_agent_config() for name, agent in self.agents.items()},
        )


class ProfileUpdate(_Request):
    """`PUT /api/profiles/{id}`: every field optional; `agents` replaces the whole map."""

    tracker: TrackerType | None = None
    working_dir: NonEmptyText | None = None
    plan_output_dir: NonEmptyText | None = None
    plan_path_pattern: NonEmptyText | None = None
    agents: dict[NonEmptyText, AgentConfigBody] | None = None

    def changes(self) -> dict[str, Any]:
        """Field -> value for `ProfileRepository.update_profile` (null fields dropped)."""
        changes: dict[str, Any] = {}
        for name in ("tracker", "working_dir", "plan_output_dir", "plan_path_pattern"):
            value = getattr(self, name)
            if value is not None:
                changes[name] = value
        if self.agents is not None:
            changes["agents"] = {
                name: agent.to_agent_config() for name, agent in self.agents.items()
            }
        return changes


class AgentConfigResponse(BaseModel):
    """One agent as returned by the API."""

    driver: DriverType
    model: str
    options: dict[str, Any]


class ProfileResponse(BaseModel):
    """A profile and whether it is the active one."""

    id: str
    tracker: TrackerType
    working_dir: str
    plan_output_dir: str
    plan_path_pattern: str
    agents: dict[str, AgentConfigResponse]
    is_active: bool

    @classmethod
    def from_profile(cls, profile: Profile, *, is_active: bool) -> ProfileResponse:
        """The response for a stored profile."""
        return cls(
            id=profile.name,
            tracker=profile.tracker,
            working_dir=profile.working_dir,
            plan_output_dir=profile.plan_output_dir,
            plan_path_pattern=profile.plan_path_pattern,
            agents={
                name: AgentConfigResponse(
                    driver=agent.driver, model=agent.model, options=dict(agent.options)
                )
                for name, agent in profile.agents.items()
            },
            is_active=is_active,
        )


# --- config -----------------------------------------------------------------------------------


class ActiveProfileInfo(BaseModel):
    """The active profile's name and the driver/model of its main agent."""

    name: str
    driver: str
    model: str


def main_agent(profile: Profile) -> AgentConfig | None:
    """The agent that represents a profile: its developer, else its first agent, else None."""
    # The developer does most of the work; a profile without one shows its first agent.
    return profile.agents.get("developer") or next(iter(profile.agents.values()), None)


class ConfigResponse(BaseModel):
    """`GET /api/config`: what the dashboard needs to know about the server."""

    working_dir: str
    max_concurrent: int
    active_profile: str
    active_profile_info: ActiveProfileInfo | None = None

    @classmethod
    def build(cls, profile: Profile | None, max_concurrent: int) -> ConfigResponse:
        """The config for an active profile (or none) and the current concurrency limit."""
        if profile is None:
            return cls(working_dir="", max_concurrent=max_concurrent, active_profile="")
        agent = main_agent(profile)
        info = ActiveProfileInfo(
            name=profile.name,
            driver="" if agent is None else agent.driver.value,
            model="" if agent is None else agent.model,
        )
        return cls(
            working_dir=profile.working_dir,
            max_concurrent=max_concurrent,
            active_profile=profile.name,
            active_profile_info=info,
        )
