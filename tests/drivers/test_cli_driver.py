"""CliDriver with real small agent scripts: stdin format, errors, timeouts that really kill."""

from __future__ import annotations

import asyncio
import enum
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from amelia.drivers import (
    AgentDriver,
    AgentRequest,
    ApiDriver,
    ChatMessage,
    CliDriver,
    DriverConfigError,
    DriverResponseError,
    DriverTransientError,
    build_driver,
    render_stdin,
)
from tests.drivers.agent_scripts import ECHO, FAIL, HANG, SILENT, wait_gone, write_agent


class DriverType(enum.StrEnum):
    """Like the profile's enum: the factory must accept members as well as strings."""

    API = "api"
    CLI = "cli"


@dataclass(frozen=True)
class Agent:
    """Stands in for the profile's AgentConfig (same attribute names)."""

    driver: Any
    model: str
    options: dict[str, Any] = field(default_factory=dict)


async def test_prompt_on_stdin_and_reply_from_stdout(tmp_path: Path) -> None:
    command = [*write_agent(tmp_path, "echo", ECHO), "--model", "{model}", "x{model}y"]
    driver = build_driver(Agent(DriverType.CLI, "opus", {"command": command}))
    assert isinstance(driver, CliDriver)
    assert isinstance(driver, AgentDriver)
    started = time.monotonic()
    reply = await driver.run(AgentRequest(prompt="Plan it.\nIn detail.", system="You plan."))
    elapsed_ms = (time.monotonic() - started) * 1000
    seen = json.loads(reply.text)
    assert seen["stdin"] == "You plan.\n\nPlan it.\nIn detail."
    assert seen["argv"] == ["--model", "opus", "xopusy"]
    assert seen["model"] == "opus"
    assert seen["own_group"] is True  # its own process group, so a kill reaches its children
    assert reply.model == "opus"
    assert (reply.input_tokens, reply.output_tokens, reply.cache_read_tokens) == (0, 0, 0)
    assert reply.cost_usd is None
    assert reply.num_turns == 1
    assert 0 < reply.duration_ms <= elapsed_ms + 1


async def test_stdin_without_system_and_with_history(tmp_path: Path) -> None:
    driver = CliDriver(command=write_agent(tmp_path, "echo", ECHO), model="m")
    plain = AgentRequest(prompt="just this", model="other")
    talk = AgentRequest(
        prompt="and now?",
        system="SYS",
        history=(ChatMessage("user", "hi"), ChatMessage("assistant", "hello\nthere")),
    )
    first = json.loads((await driver.run(plain)).text)
    second = json.loads((await driver.run(talk)).text)
    assert first["stdin"] == "just this"
    assert first["model"] == "other"
    expected = "SYS\n\nUser:\nhi\n\nAssistant:\nhello\nthere\n\nUser:\nand now?"
    assert second["stdin"] == expected == render_stdin(talk)


async def test_runs_in_the_request_cwd(tmp_path: Path) -> None:
    worktree = tmp_path / "worktree"
    worktree.mkdir()
    driver = CliDriver(command=write_agent(tmp_path, "echo", ECHO), model="m")
    reply = await driver.run(AgentRequest(prompt="p", cwd=worktree))
    assert Path(json.loads(reply.text)["cwd"]) == worktree
    with pytest.raises(DriverConfigError, match="does not exist"):
        await driver.run(AgentRequest(prompt="p", cwd=tmp_path / "missing"))


async def test_large_prompt_and_reply_do_not_deadlock(tmp_path: Path) -> None:
    driver = CliDriver(command=write_agent(tmp_path, "echo", ECHO), model="m")
    prompt = "é" * 600_000  # 1.2 MB of UTF-8, far beyond a pipe buffer each way
    reply = await driver.run(AgentRequest(prompt=prompt))
    assert json.loads(reply.text)["stdin"] == prompt


async def test_non_zero_exit_names_code_and_stderr_tail(tmp_path: Path) -> None:
    driver = CliDriver(command=write_agent(tmp_path, "fail", FAIL), model="m")
    with pytest.raises(DriverResponseError, match="exited with code 3") as caught:
        await driver.run(AgentRequest(prompt="p"))
    message = str(caught.value)
    assert caught.value.status == 3
    assert "err-11" in message and "err-30" in message  # the last 20 lines
    assert "err-10" not in message


async def test_empty_stdout_is_response_error(tmp_path: Path) -> None:
    driver = CliDriver(command=write_agent(tmp_path, "silent", SILENT), model="m")
    with pytest.raises(DriverResponseError, match=r"nothing on stdout.*only a warning"):
        await driver.run(AgentRequest(prompt="p"))


@pytest.mark.parametrize("ignore_term", [False, True])
async def test_timeout_kills_the_process_group(tmp_path: Path, ignore_term: bool) -> None:
    pidfile = tmp_path / "pids"
    command = [*write_agent(tmp_path, "hang", HANG), str(pidfile)]
    if ignore_term:
        command.append("--ignore-term")
    driver = CliDriver(command=command, model="m", timeout=1.0, kill_grace=0.3)
    started = time.monotonic()
    with pytest.raises(DriverTransientError, match="timed out after 1s"):
        await driver.run(AgentRequest(prompt="p"))
    elapsed = time.monotonic() - started
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) == 2  # the agent and the child it started
    assert await wait_gone(pids, timeout=2.0), f"still running: {pids}"
    if ignore_term:
        assert elapsed >= 1.3  # SIGTERM was ignored: killed after the grace period
    else:
        assert elapsed < 1.25  # SIGTERM was enough: no grace period spent


async def test_cancelling_the_call_kills_the_agent(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    command = [*write_agent(tmp_path, "hang", HANG), str(pidfile)]
    driver = CliDriver(command=command, model="m", timeout=30, kill_grace=0.3)
    task = asyncio.create_task(driver.run(AgentRequest(prompt="p")))
    deadline = time.monotonic() + 10
    while not pidfile.exists() and time.monotonic() < deadline:  # noqa: ASYNC110 - a file
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pids = [int(p) for p in pidfile.read_text().split()]
    assert await wait_gone(pids, timeout=2.0), f"still running: {pids}"


async def test_missing_or_unrunnable_executable_is_config_error(tmp_path: Path) -> None:
    not_executable = tmp_path / "agent.sh"
    not_executable.write_text("#!/bin/sh\necho hi\n")
    cases = [
        (["amelia-no-such-agent-cli", "-p"], r"amelia-no-such-agent-cli.*not found"),
        ([str(tmp_path / "nowhere" / "agent")], r"nowhere/agent.*not found"),
        ([str(not_executable)], r"agent.sh.*not executable"),
    ]
    for command, pattern in cases:
        driver = CliDriver(command=command, model="m")
        with pytest.raises(DriverConfigError, match=pattern):
            await driver.run(AgentRequest(prompt="p"))


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"command": "claude -p --model opus"}, "argv list.*not the string.*without a shell"),
        ({}, "needs the agent option 'command'"),
        ({"command": []}, "non-empty list"),
        ({"command": ["claude", 3]}, "non-empty list"),
        ({"command": [""]}, "non-empty list"),
        ({"command": ["x"], "timeout": -1}, "'timeout' must be > 0"),
        ({"command": ["x"], "shell": True}, "unknown 'cli' agent option.*shell"),
    ],
)
def test_invalid_cli_options_are_config_errors(options: dict[str, Any], pattern: str) -> None:
    with pytest.raises(DriverConfigError, match=pattern):
        build_driver(Agent("cli", "m", options))


def test_string_command_refused_by_constructor() -> None:
    with pytest.raises(DriverConfigError, match="without a shell"):
        CliDriver(command="echo hi", model="m")


@pytest.mark.parametrize("driver", ["claude", "", None, 3])
def test_unknown_driver_is_config_error(driver: object) -> None:
    with pytest.raises(DriverConfigError, match=r"unknown agent driver.*api, cli"):
        build_driver(Agent(driver, "m", {"command": ["x"]}))


async def test_factory_builds_api_driver_from_enum() -> None:
    config = Agent(DriverType.API, "m", {"base_url": "http://127.0.0.1:9/v1"})
    driver = build_driver(config, environ={})
    try:
        assert isinstance(driver, ApiDriver)
        assert driver.model == "m"
    finally:
        await driver.aclose()
