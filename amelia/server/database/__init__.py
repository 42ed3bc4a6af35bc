"""The data layer: schema, connection, migrations and repositories."""

from amelia.server.database.brainstorm_repository import BrainstormRepository
from amelia.server.database.connection import Database, DatabaseConnectionError
from amelia.server.database.profile_repository import ProfileRecord, ProfileRepository
from amelia.server.database.prompt_repository import PromptRepository
from amelia.server.database.settings_repository import ServerSettings, SettingsRepository

__all__ = [
    "BrainstormRepository",
    "Database",
    "DatabaseConnectionError",
    "ProfileRecord",
    "ProfileRepository",
    "PromptRepository",
    "ServerSettings",
    "SettingsRepository",
]
