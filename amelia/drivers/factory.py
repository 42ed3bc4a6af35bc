"""Build the driver a profile's agent configuration asks for.

`build_driver` accepts anything shaped like the profile's `AgentConfig` (`driver`, `model`,
`options`) without importing it, so the drivers do not depend on the server's models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from amelia.drivers.api import ApiDriver
from amelia.drivers.base import AgentDriver, DriverConfigError
from amelia.drivers.cli import CliDriver

DRIVER_TYPES = ("api", "cli")


class AgentConfigLike(Protocol):
    """The attributes `build_driver` reads (read-only, so frozen models qualify)."""

    @property
    def driver(self) -> object:
        """`"api"` or `"cli"`, as a string or a string enum."""
        ...

    @property
    def model(self) -> str:
        """The model id the agent uses by default."""
        ...

    @property
    def options(self) -> Mapping[str, object]:
        """Driver-specific options (see `amelia.drivers.api` and `amelia.drivers.cli`)."""
        ...


def driver_type(value: object) -> str:
    """The driver name of a plain string or a string enum member."""
    raw = getattr(value, "value", value)
    return raw.strip().lower() if isinstance(raw, str) else repr(raw)


def build_driver(
    agent_config: AgentConfigLike, environ: Mapping[str, str] | None = None
) -> AgentDriver:
    """Build an `AgentDriver` for one agent of a profile.

    Args:
        agent_config: The agent's configuration (`driver`, `model`, `options`).
        environ: Environment for the `api` driver's key and base URL (default `os.environ`).

    Returns:
        An `ApiDriver` or a `CliDriver`; the caller closes it with `aclose()`.

    Raises:
        DriverConfigError: unknown driver, or invalid or missing options for the driver.
    """
    kind = driver_type(agent_config.driver)
    options = agent_config.options or {}
    if not isinstance(options, Mapping):
        raise DriverConfigError(f"agent options must be a mapping, got {type(options).__name__}")
    if kind == "api":
        return ApiDriver.from_options(agent_config.model, options, environ)
    if kind == "cli":
        return CliDriver.from_options(agent_config.model, options)
    raise DriverConfigError(
        f"unknown agent driver {kind!r}: set the agent's 'driver' to one of "
        f"{', '.join(DRIVER_TYPES)}"
    )
