"""Built-in rows every database needs: the settings singleton and the default prompts.

Seeding only inserts what is missing; a row a user changed is never overwritten.
"""

from __future__ import annotations

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Connection

from amelia.agents.prompts.defaults import PROMPT_DEFAULTS
from amelia.server.database.schema import prompts, server_settings


def seed_defaults(connection: Connection) -> None:
    """Insert the settings row (id 1) and any prompt id of PROMPT_DEFAULTS not yet present."""
    connection.execute(insert(server_settings).values(id=1).on_conflict_do_nothing())
    rows = [
        {
            "id": prompt_id,
            "agent": default.agent,
            "name": default.name,
            "description": default.description,
        }
        for prompt_id, default in PROMPT_DEFAULTS.items()
    ]
    connection.execute(insert(prompts).on_conflict_do_nothing(index_elements=["id"]), rows)
