"""Fixtures shared by the checkpointer tests."""

from __future__ import annotations

import pytest

from amelia.server.checkpoint import setup_checkpoint_tables


@pytest.fixture
async def checkpoint_url(database_url: str) -> str:
    """A fresh database with the saver's tables."""
    await setup_checkpoint_tables(database_url)
    return database_url
