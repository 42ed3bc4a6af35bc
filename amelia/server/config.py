"""Server configuration: every `AMELIA_*` environment variable, validated once at start.

One URL setting (`AMELIA_DATABASE_URL`) serves both database drivers: SQLAlchemy gets a
`postgresql+asyncpg://` URL and the checkpointer's psycopg pool gets a plain conninfo URL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

ENV_PREFIX = "AMELIA_"

# Schemes we accept in AMELIA_DATABASE_URL; any driver suffix is replaced by ours.
_ACCEPTED_SCHEMES = {"postgresql", "postgres"}


class ConfigurationError(ValueError):
    """A setting has a value the server cannot start with; the message names the variable."""


def env_name(field: str) -> str:
    """The environment variable that sets a config field."""
    return f"{ENV_PREFIX}{field.upper()}"


def parse_database_url(raw: str, variable: str = "AMELIA_DATABASE_URL") -> URL:
    """Parse and check a PostgreSQL URL; the result has the bare `postgresql` scheme.

    Raises:
        ConfigurationError: the URL does not parse, is not PostgreSQL, or names no database.
    """
    text = raw.strip()
    try:
        url = make_url(text)
    except (ArgumentError, ValueError) as exc:
        raise ConfigurationError(
            f"{variable} is not a valid URL ({exc}); expected "
            "postgresql://user:password@host:5432/database"
        ) from None
    scheme = url.drivername.split("+", 1)[0]
    if scheme not in _ACCEPTED_SCHEMES:
        raise ConfigurationError(
            f"{variable} must start with postgresql:// or postgres://, got {url.drivername}://"
        )
    if not url.database:
        raise ConfigurationError(
            f"{variable} names no database; add one after the host, e.g. "
            "postgresql://user@localhost:5432/amelia"
        )
    if url.port is not None and not 0 < url.port < 65536:
        raise ConfigurationError(f"{variable} has an invalid port {url.port}")
    return url.set(drivername="postgresql")


def redact_url(url: URL | str) -> str:
    """Render a URL for messages and logs, with any password replaced by `***`."""
    parsed = make_url(url) if isinstance(url, str) else url
    return parsed.render_as_string(hide_password=True)


def sqlalchemy_url(url: URL) -> URL:
    """The SQLAlchemy asyncpg form of a checked URL."""
    return url.set(drivername="postgresql+asyncpg")


def psycopg_conninfo(url: URL) -> str:
    """The libpq/psycopg form of a checked URL (password kept: it is for connecting)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class ServerConfig(BaseSettings):
    """Settings read from `AMELIA_*` environment variables (and a `.env` file if present)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", validate_default=True
    )

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL; unset means the embedded server under AMELIA_HOME.",
    )
    db_pool_min_size: int = Field(default=2, ge=0, le=100)
    db_pool_max_size: int = Field(default=10, ge=1, le=200)
    db_pool_timeout_seconds: float = Field(default=10.0, gt=0)
    db_connect_timeout_seconds: float = Field(default=10.0, gt=0)
    db_statement_timeout_ms: int = Field(
        default=30_000, ge=0, description="Server-side statement timeout; 0 disables it."
    )
    db_application_name: str = Field(default="amelia", min_length=1, max_length=63)

    checkpoint_pool_min_size: int = Field(default=1, ge=0, le=100)
    checkpoint_pool_max_size: int = Field(default=10, ge=1, le=200)
    checkpoint_prepare_threshold: int | None = Field(
        default=0,
        description="psycopg prepare_threshold; 'none' disables prepared statements "
        "(needed behind a transaction-mode pooler).",
    )

    # Several server processes share one database: each running workflow has an owner whose
    # lease it renews; another process takes a run over once its lease has expired.
    lease_seconds: float = Field(default=30.0, gt=0, description="How long a run's lease lasts.")
    heartbeat_seconds: float = Field(
        default=10.0, gt=0, description="How often a process renews its leases."
    )
    claim_poll_seconds: float = Field(
        default=2.0, gt=0, description="How often a process looks for runnable workflows."
    )
    max_takeovers: int = Field(
        default=3, ge=0, description="Take-overs of one run before it is failed instead."
    )

    max_request_body_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=1024,
        description="Larger request bodies are refused with a 413 before they are read.",
    )

    host: str = Field(default="127.0.0.1")
    port: int = Field(default=8420, ge=1, le=65535)
    access_log: bool = Field(
        default=False, description="Log one line per HTTP request (uvicorn's access log)."
    )
    home: Path = Field(default=Path("~/.amelia"), description="Amelia's own directory.")

    @field_validator("database_url", mode="before")
    @classmethod
    def _blank_url_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return psycopg_conninfo(parse_database_url(value))

    @field_validator("checkpoint_prepare_threshold", mode="before")
    @classmethod
    def _none_words(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in {"", "none", "off", "disable"}:
            return None
        return value

    @field_validator("home")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @model_validator(mode="after")
    def _check_pool_bounds(self) -> ServerConfig:
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ValueError(
                f"AMELIA_DB_POOL_MIN_SIZE ({self.db_pool_min_size}) is larger than "
                f"AMELIA_DB_POOL_MAX_SIZE ({self.db_pool_max_size})"
            )
        if self.checkpoint_pool_min_size > self.checkpoint_pool_max_size:
            raise ValueError(
                f"AMELIA_CHECKPOINT_POOL_MIN_SIZE ({self.checkpoint_pool_min_size}) is larger "
                f"than AMELIA_CHECKPOINT_POOL_MAX_SIZE ({self.checkpoint_pool_max_size})"
            )
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError(
                f"AMELIA_HEARTBEAT_SECONDS ({self.heartbeat_seconds}) must be shorter than "
                f"AMELIA_LEASE_SECONDS ({self.lease_seconds}), or leases expire between renewals"
            )
        return self

    @property
    def database_url_parsed(self) -> URL | None:
        """The configured URL as a SQLAlchemy URL object, or None for the embedded default."""
        return None if self.database_url is None else make_url(self.database_url)


def load_config(**overrides: Any) -> ServerConfig:
    """Read the configuration, turning validation failures into one clear error.

    Raises:
        ConfigurationError: naming each offending `AMELIA_*` variable and what is wrong.
    """
    try:
        return ServerConfig(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            message = str(error["msg"]).removeprefix("Value error, ")
            name = env_name(field) if field else ""
            problems.append(
                message if not name or message.startswith(name) else f"{name}: {message}"
            )
        raise ConfigurationError("Invalid configuration: " + "; ".join(problems)) from None
