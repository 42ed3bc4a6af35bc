"""Configuration: one URL for both drivers, clear errors naming the variable."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from amelia.server.config import (
    ConfigurationError,
    load_config,
    psycopg_conninfo,
    redact_url,
    sqlalchemy_url,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("AMELIA_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir("/")  # no .env file from the project root


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config()
    assert config.database_url is None
    assert (config.db_pool_min_size, config.db_pool_max_size) == (2, 10)
    assert (config.host, config.port) == ("127.0.0.1", 8420)
    assert config.db_statement_timeout_ms > 0
    assert config.checkpoint_pool_max_size >= config.checkpoint_pool_min_size
    assert not str(config.home).startswith("~")


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+asyncpg"])
def test_one_url_serves_both_drivers(monkeypatch: pytest.MonkeyPatch, scheme: str) -> None:
    monkeypatch.setenv("AMELIA_DATABASE_URL", f"{scheme}://amelia:s3cret@db.example:6543/amelia")
    config = load_config()
    parsed = config.database_url_parsed
    assert parsed is not None
    assert sqlalchemy_url(parsed).drivername == "postgresql+asyncpg"
    conninfo = psycopg_conninfo(parsed)
    assert conninfo == "postgresql://amelia:s3cret@db.example:6543/amelia"
    assert "s3cret" not in redact_url(parsed)
    assert "***" in redact_url(parsed)


def test_unix_socket_url_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMELIA_DATABASE_URL", "postgresql://me@/amelia?host=/run/pg&port=5433")
    parsed = load_config().database_url_parsed
    assert parsed is not None
    assert parsed.query["host"] == "/run/pg"
    assert make_url(psycopg_conninfo(parsed)).query["port"] == "5433"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("mysql://u@h/db", "must start with postgresql://"),
        ("postgresql://h:notaport/db", "not a valid URL"),
        ("::::", "not a valid URL"),
        ("postgresql://u@h:5432", "names no database"),
        ("postgresql://u@h:70000/db", "invalid port"),
    ],
)
def test_malformed_url_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, url: str, words: str
) -> None:
    monkeypatch.setenv("AMELIA_DATABASE_URL", url)
    with pytest.raises(ConfigurationError) as caught:
        load_config()
    assert "AMELIA_DATABASE_URL" in str(caught.value)
    assert words in str(caught.value)


def test_blank_url_means_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMELIA_DATABASE_URL", "  ")
    assert load_config().database_url is None


def test_min_larger_than_max_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMELIA_DB_POOL_MIN_SIZE", "12")
    monkeypatch.setenv("AMELIA_DB_POOL_MAX_SIZE", "4")
    with pytest.raises(ConfigurationError) as caught:
        load_config()
    assert "AMELIA_DB_POOL_MIN_SIZE" in str(caught.value)
    assert "AMELIA_DB_POOL_MAX_SIZE" in str(caught.value)


def test_bad_number_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMELIA_PORT", "eighty")
    with pytest.raises(ConfigurationError, match="AMELIA_PORT"):
        load_config()


@pytest.mark.parametrize(("raw", "expected"), [("none", None), ("", None), ("5", 5)])
def test_checkpoint_prepare_threshold(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: int | None
) -> None:
    monkeypatch.setenv("AMELIA_CHECKPOINT_PREPARE_THRESHOLD", raw)
    assert load_config().checkpoint_prepare_threshold == expected
