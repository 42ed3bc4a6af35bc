"""Which database a command uses: `AMELIA_DATABASE_URL`, or the embedded server.

With no URL configured the embedded PostgreSQL under `AMELIA_HOME/postgres` is started (and
stopped again afterwards if this process started it), so a new user needs no setup.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from amelia.server.config import ServerConfig, redact_url
from amelia.server.embedded import DEFAULT_DATABASE, EmbeddedPostgres


@dataclass(frozen=True)
class DatabaseTarget:
    """A database to use and how it was chosen."""

    url: str
    embedded: EmbeddedPostgres | None

    @property
    def description(self) -> str:
        if self.embedded is not None:
            return f"the embedded PostgreSQL in {self.embedded.data_dir} (database amelia)"
        return f"{redact_url(self.url)} (from AMELIA_DATABASE_URL)"


def embedded_server(config: ServerConfig) -> EmbeddedPostgres:
    """The embedded server for this configuration's Amelia home."""
    return EmbeddedPostgres(config.home / "postgres")


@contextmanager
def database_target(config: ServerConfig) -> Iterator[DatabaseTarget]:
    """Yield the database to use; starts (and afterwards stops) the embedded server if needed."""
    if config.database_url is not None:
        yield DatabaseTarget(url=config.database_url, embedded=None)
        return
    config.home.mkdir(parents=True, exist_ok=True)
    server = embedded_server(config)
    already_running = server.is_running()
    server.start()
    try:
        server.ensure_database(DEFAULT_DATABASE)
        yield DatabaseTarget(url=server.url(DEFAULT_DATABASE), embedded=server)
    finally:
        if not already_running:
            server.stop()
