"""Event distribution inside one server process."""
