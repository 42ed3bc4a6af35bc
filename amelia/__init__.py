"""Amelia: an agentic coding orchestrator server on PostgreSQL."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("amelia")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
