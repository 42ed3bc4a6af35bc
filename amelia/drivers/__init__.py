"""Agent drivers: how an agent node sends a prompt and gets a reply with its usage.

`build_driver(agent_config)` picks the driver a profile configures: `api` (OpenAI-compatible
chat completions over HTTP) or `cli` (a local command fed on stdin).
"""

from amelia.drivers.api import ApiDriver
from amelia.drivers.base import (
    AgentDriver,
    AgentReply,
    AgentRequest,
    ChatMessage,
    DriverConfigError,
    DriverError,
    DriverResponseError,
    DriverTransientError,
)
from amelia.drivers.cli import CliDriver, render_stdin
from amelia.drivers.factory import AgentConfigLike, build_driver

__all__ = [
    "AgentConfigLike",
    "AgentDriver",
    "AgentReply",
    "AgentRequest",
    "ApiDriver",
    "ChatMessage",
    "CliDriver",
    "DriverConfigError",
    "DriverError",
    "DriverResponseError",
    "DriverTransientError",
    "build_driver",
    "render_stdin",
]
