"""The data layer: schema, connection, migrations and repositories."""

from amelia.server.database.connection import Database, DatabaseConnectionError

__all__ = ["Database", "DatabaseConnectionError"]
