"""Fixtures of the fault suite: a PostgreSQL of its own, a database per scenario, agents.

The suite is not part of the default `pytest` run (pyproject ignores this directory);
`make test-reliability` runs it explicitly.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.orchestrator.agent_server import AgentServer
from tests.reliability.owned_pg import OwnedPostgres, remove_stale_clusters


@pytest.fixture(scope="session")
def owned_pg() -> Iterator[OwnedPostgres]:
    """A PostgreSQL cluster the suite may restart at will (never the shared one)."""
    remove_stale_clusters()  # left running by runs that were killed
    server = OwnedPostgres().start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def scenario_db(owned_pg: OwnedPostgres) -> Iterator[str]:
    """A fresh migrated database on the owned server; its name."""
    name = owned_pg.new_database()
    try:
        yield name
    finally:
        owned_pg.drop(name)


class PacedAgents(AgentServer):
    """The scripted agents, each answer taking `delay` seconds, as a model's would."""

    def __init__(self, *, tasks: int = 1, delay: float = 0.0) -> None:
        super().__init__(tasks=tasks)
        self.delay = delay

    def answer(self, role: str, body: dict[str, Any]) -> tuple[int, str]:
        if self.delay:
            time.sleep(self.delay)
        return super().answer(role, body)


@pytest.fixture
def agents() -> Iterator[PacedAgents]:
    server = PacedAgents(tasks=3, delay=0.2).start()
    try:
        yield server
    finally:
        server.stop()
