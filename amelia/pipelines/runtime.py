"""What a pipeline node needs from the outside world: a way to ask an agent.

The orchestrator puts an `AgentRuntime` into `config["configurable"]["runtime"]`; nodes
never build drivers, read prompts or write token usage themselves.
"""

from __future__ import annotations

from typing import Any, Protocol

from langchain_core.runnables import RunnableConfig


class AgentRuntime(Protocol):
    """Runs one agent turn and records what it cost."""

    async def ask(self, agent: str, prompt_id: str, user_prompt: str, *, step: str) -> str:
        """Ask `agent` with the system prompt `prompt_id`; returns the reply text.

        `step` names the graph step (for usage records and events).
        """
        ...


class MissingRuntimeError(RuntimeError):
    """A graph was run without an AgentRuntime in its config."""


def runtime_from(config: RunnableConfig) -> AgentRuntime:
    configurable: dict[str, Any] = dict(config.get("configurable") or {})
    runtime = configurable.get("runtime")
    if runtime is None:
        raise MissingRuntimeError("config['configurable']['runtime'] is not set")
    return runtime  # type: ignore[no-any-return]
