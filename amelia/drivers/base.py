"""What every agent driver shares: the request and reply shapes, the protocol, the errors.

An agent node (architect, developer, reviewer, evaluator, brainstormer) builds an
`AgentRequest`, hands it to whichever `AgentDriver` its profile configures, and gets an
`AgentReply` with the text and the usage to record. Drivers raise only `DriverError`
subclasses, so a node can tell "try again later" (`DriverTransientError`) from "fix the
configuration" (`DriverConfigError`) from "the agent answered something unusable"
(`DriverResponseError`).

The option helpers at the bottom validate a profile's free-form `options` dict so that a typo
or a wrong type fails with a message naming the option, never with a `KeyError` mid-run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

Role = Literal["user", "assistant"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One earlier turn of a conversation (the brainstormer keeps a history)."""

    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class AgentRequest:
    """One call to an agent.

    Attributes:
        prompt: The user prompt of this turn (required, non-empty).
        system: The system prompt; empty means none.
        history: Earlier turns, oldest first, sent between the system prompt and `prompt`.
        model: Overrides the driver's configured model for this call.
        max_tokens: Upper bound on the reply length (API drivers only).
        temperature: Sampling temperature, 0..2 (API drivers only).
        cwd: Working directory for drivers that run a process (the workflow's worktree).
    """

    prompt: str
    system: str = ""
    history: tuple[ChatMessage, ...] = ()
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    cwd: Path | None = None

    def __post_init__(self) -> None:
        if not self.prompt.strip():
            raise ValueError("AgentRequest.prompt must not be empty")
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise ValueError(f"AgentRequest.max_tokens must be positive, got {self.max_tokens}")
        if self.temperature is not None and not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"AgentRequest.temperature must be in 0..2, got {self.temperature}")
        for message in self.history:
            if message.role not in ("user", "assistant"):
                raise ValueError(f"history roles are 'user' or 'assistant', got {message.role!r}")

    def chat_messages(self) -> list[dict[str, str]]:
        """The request as OpenAI-style `messages`: system, history, then the prompt."""
        messages: list[dict[str, str]] = []
        if self.system:
            messages.append({"role": "system", "content": self.system})
        messages.extend({"role": m.role, "content": m.content} for m in self.history)
        messages.append({"role": "user", "content": self.prompt})
        return messages


@dataclass(frozen=True, slots=True)
class AgentReply:
    """What an agent answered and what it cost.

    Attributes:
        text: The reply text (never empty: an empty reply is a `DriverResponseError`).
        model: The model that actually answered (the provider's, when it says).
        input_tokens: Prompt tokens, cache reads included (the `token_usage` convention).
        output_tokens: Completion tokens.
        cache_read_tokens: Prompt tokens served from the provider's cache.
        cache_creation_tokens: Prompt tokens written to the provider's cache.
        cost_usd: Cost the provider reported, or None when it reported none.
        duration_ms: Wall-clock time of the call, retries and backoff included.
        num_turns: Agent turns the call took (1 for a plain completion).
        finish_reason: Why generation stopped, when the provider says (e.g. "stop", "length").
    """

    text: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cost_usd: Decimal | None = None
    duration_ms: int = 0
    num_turns: int = 1
    finish_reason: str | None = None


@runtime_checkable
class AgentDriver(Protocol):
    """Runs agent requests. Implementations are safe to share between concurrent calls."""

    async def run(self, request: AgentRequest) -> AgentReply:
        """Send one request and return the reply.

        Raises:
            DriverConfigError: the driver cannot run as configured.
            DriverTransientError: a failure worth retrying later (timeouts, overload).
            DriverResponseError: the agent's answer could not be used.
        """
        ...

    async def aclose(self) -> None:
        """Release connections or other resources; the driver is unusable afterwards."""
        ...


class DriverError(Exception):
    """Base of every error an agent driver raises."""


class DriverConfigError(DriverError):
    """The driver is misconfigured; the message names the option or variable to set."""


class DriverTransientError(DriverError):
    """A failure that may succeed if tried again later (after the driver's own retries).

    Attributes:
        retry_after: Seconds the provider asked us to wait, when it said.
        attempts: How many attempts the driver made before giving up.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, attempts: int = 1):
        super().__init__(message)
        self.retry_after = retry_after
        self.attempts = attempts


class DriverResponseError(DriverError):
    """The agent answered, but the answer cannot be used (4xx, malformed body, bad exit).

    Attributes:
        status: HTTP status, or the process exit code for a CLI agent; None if not applicable.
        excerpt: A short excerpt of the offending body or stderr.
    """

    def __init__(self, message: str, *, status: int | None = None, excerpt: str = ""):
        super().__init__(message)
        self.status = status
        self.excerpt = excerpt


def excerpt(text: str, limit: int = 300) -> str:
    """Collapse whitespace and cut `text` to `limit` characters for an error message."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# --- option helpers ---------------------------------------------------------------------------


def check_known_options(driver: str, options: Mapping[str, object], known: Iterable[str]) -> None:
    """Refuse option names the driver does not know (a typo would otherwise be silently ignored).

    Raises:
        DriverConfigError: naming the unknown options and the accepted ones.
    """
    allowed = sorted(known)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DriverConfigError(
            f"unknown {driver!r} agent option(s) {', '.join(unknown)}; "
            f"accepted options: {', '.join(allowed)}"
        )


def option_str(options: Mapping[str, object], name: str, default: str | None) -> str | None:
    """A non-empty string option, or `default` when absent or null."""
    value = options.get(name)
    if value is None:
        return default
    if not isinstance(value, str) or not value.strip():
        raise DriverConfigError(f"agent option {name!r} must be a non-empty string, got {value!r}")
    return value.strip()


def option_number(options: Mapping[str, object], name: str) -> float | None:
    """A finite number option, or None when absent or null."""
    value = options.get(name)
    if value is None:
        return None
    # bool is an int subclass; `timeout: true` is a mistake, not 1 second.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DriverConfigError(f"agent option {name!r} must be a number, got {value!r}")
    return float(value)


def option_positive(options: Mapping[str, object], name: str, default: float) -> float:
    """A number option > 0 (seconds, delays), or `default` when absent or null."""
    value = option_number(options, name)
    if value is None:
        return default
    if value <= 0:
        raise DriverConfigError(f"agent option {name!r} must be > 0, got {value:g}")
    return value


def option_int(
    options: Mapping[str, object], name: str, default: int | None, *, minimum: int = 0
) -> int | None:
    """An integer option >= `minimum`, or `default` when absent or null."""
    value = options.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DriverConfigError(
            f"agent option {name!r} must be an integer >= {minimum}, got {value!r}"
        )
    return value
