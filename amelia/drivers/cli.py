"""The `cli` driver: run a configured command with the prompt on stdin, read the reply on stdout.

Profile options:

- `command` (required): the argv list, e.g. `["claude", "-p", "--model", "{model}"]`. It runs
  without a shell; a plain string is refused. Every `{model}` inside an argument is replaced by
  the request's model (or the agent's configured one), which is also in `AMELIA_MODEL`.
- `timeout` (1800 s): after this the whole process group gets SIGTERM, then SIGKILL after
  `kill_grace` (5 s) seconds, and the call raises `DriverTransientError`.

Stdin format (UTF-8, no trailing newline added, stdin closed afterwards)::

    <system prompt>
    <blank line>
    <user prompt>

The system part and its blank line are left out when there is no system prompt. With a
conversation history each turn becomes a labelled block, blocks separated by a blank line::

    <system prompt>

    User:
    <earlier user turn>

    Assistant:
    <earlier assistant turn>

    User:
    <user prompt>

The reply is stdout decoded as UTF-8 with surrounding whitespace removed; stderr is kept for
error messages. Token counts are zero (a CLI reports none we can trust) and `duration_ms` is
measured around the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Mapping, Sequence

from amelia.drivers.base import (
    AgentReply,
    AgentRequest,
    DriverConfigError,
    DriverResponseError,
    DriverTransientError,
    check_known_options,
    excerpt,
    option_positive,
)

OPTIONS = ("command", "timeout", "kill_grace")
MODEL_PLACEHOLDER = "{model}"
STDERR_TAIL_LINES = 20


def render_stdin(request: AgentRequest) -> str:
    """The exact text a CLI agent receives on stdin for `request` (see the module docstring)."""
    blocks: list[str] = [request.system] if request.system else []
    if request.history:
        labels = {"user": "User", "assistant": "Assistant"}
        blocks.extend(f"{labels[m.role]}:\n{m.content}" for m in request.history)
        blocks.append(f"User:\n{request.prompt}")
    else:
        blocks.append(request.prompt)
    return "\n\n".join(blocks)


def parse_command(value: object) -> tuple[str, ...]:
    """Validate the `command` option: a non-empty list of non-empty strings.

    Raises:
        DriverConfigError: the command is missing, a string, or has a non-string item.
    """
    example = '["my-agent", "--model", "{model}"]'
    if value is None:
        raise DriverConfigError(
            f"the 'cli' driver needs the agent option 'command', an argv list such as {example}"
        )
    if isinstance(value, str):
        # A string would need a shell (or naive splitting) to become argv; we never use a shell.
        raise DriverConfigError(
            f"agent option 'command' must be an argv list such as {example}, not the string "
            f"{value!r}: commands run without a shell"
        )
    if (
        not isinstance(value, list | tuple)
        or not value
        or not all(isinstance(arg, str) for arg in value)
        or not value[0].strip()
    ):
        raise DriverConfigError(
            f"agent option 'command' must be a non-empty list of strings such as {example}, "
            f"got {value!r}"
        )
    return tuple(value)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    # The child leads its own session, so its pid is the group id; the group outlives the
    # leader while any member is alive, which is how grandchildren get the signal too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class CliDriver:
    """An `AgentDriver` that runs one process per call. It holds no resources between calls."""

    def __init__(
        self,
        *,
        command: Sequence[str],
        model: str,
        timeout: float = 1800.0,
        kill_grace: float = 5.0,
    ) -> None:
        """Build the driver; prefer `from_options` for profile configuration.

        Args:
            command: The argv list; `{model}` in an argument is replaced by the model.
            model: Default model for requests that set none.
            timeout: Seconds a call may run before its process group is killed.
            kill_grace: Seconds between SIGTERM and SIGKILL when killing.

        Raises:
            DriverConfigError: the command is not a non-empty list of strings.
        """
        self.command = parse_command(command)
        self.model = model
        self._timeout = timeout
        self._kill_grace = kill_grace

    @classmethod
    def from_options(cls, model: str, options: Mapping[str, object]) -> CliDriver:
        """Build the driver from a profile agent's `model` and `options`.

        Raises:
            DriverConfigError: `command` is missing or not an argv list, or an option is invalid.
        """
        check_known_options("cli", options, OPTIONS)
        return cls(
            command=parse_command(options.get("command")),
            model=model,
            timeout=option_positive(options, "timeout", 1800.0),
            kill_grace=option_positive(options, "kill_grace", 5.0),
        )

    async def __aenter__(self) -> CliDriver:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Nothing to release: each call's process is gone when the call returns."""

    async def run(self, request: AgentRequest) -> AgentReply:
        """Run the command once with the rendered prompt on stdin and return its stdout.

        Raises:
            DriverConfigError: the executable or the working directory does not exist, or the
                executable cannot be run.
            DriverTransientError: the process outlived `timeout` (it has been killed).
            DriverResponseError: non-zero exit (the message has the code and the end of stderr),
                or nothing on stdout.
        """
        model = request.model or self.model
        argv = [arg.replace(MODEL_PLACEHOLDER, model) for arg in self.command]
        if request.cwd is not None and not request.cwd.is_dir():
            raise DriverConfigError(f"working directory {request.cwd} does not exist")
        started = time.monotonic()
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=request.cwd,
                env={**os.environ, "AMELIA_MODEL": model},
                start_new_session=True,  # own process group: a timeout kills its children too
            )
        except FileNotFoundError as exc:
            raise DriverConfigError(
                f"agent command {argv[0]!r} was not found: install it or fix the agent option "
                "'command' (the first item must be an executable on PATH or a path to one)"
            ) from exc
        except PermissionError as exc:
            raise DriverConfigError(
                f"agent command {argv[0]!r} is not executable: fix its permissions or the agent "
                "option 'command'"
            ) from exc
        try:
            async with asyncio.timeout(self._timeout):
                stdout, stderr = await process.communicate(render_stdin(request).encode())
        except TimeoutError:
            await self._kill(process)
            raise DriverTransientError(
                f"agent command {argv[0]!r} timed out after {self._timeout:g}s and was killed "
                "(raise the agent option 'timeout' if it needs longer)"
            ) from None
        except BaseException:
            # Cancelled (e.g. the workflow was cancelled): never leave the agent running.
            await self._kill(process)
            raise
        duration_ms = round((time.monotonic() - started) * 1000)
        out = stdout.decode("utf-8", errors="replace")
        err = stderr.decode("utf-8", errors="replace")
        code = process.returncode
        if code != 0:
            tail = "\n".join((err.strip() or out.strip()).splitlines()[-STDERR_TAIL_LINES:])
            tail = tail[-2000:]
            how = (
                f"was killed by signal {-code}"
                if code is not None and code < 0
                else (f"exited with code {code}")
            )
            raise DriverResponseError(
                f"agent command {argv[0]!r} {how}; last lines of stderr:\n{tail}",
                status=code,
                excerpt=tail,
            )
        text = out.strip()
        if not text:
            raise DriverResponseError(
                f"agent command {argv[0]!r} exited 0 but wrote nothing on stdout; "
                f"stderr: {excerpt(err)}",
                status=0,
                excerpt=excerpt(err),
            )
        return AgentReply(text=text, model=model, duration_ms=duration_ms, num_turns=1)

    async def _kill(self, process: asyncio.subprocess.Process) -> None:
        """SIGTERM the process group, wait `kill_grace`, then SIGKILL whatever is left."""
        _signal_group(process.pid, signal.SIGTERM)
        await _wait_exit(process, self._kill_grace)
        # Sent even when the leader already exited: children that ignored SIGTERM remain.
        _signal_group(process.pid, signal.SIGKILL)
        if process.returncode is None:
            # Belt and braces: should the group signal fail, the leader itself must still die.
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await _wait_exit(process, 5.0)  # SIGKILL cannot be ignored: returns at once in practice
        # Let the pipes drain so the transport closes cleanly, but bounded: a process that left
        # the group (setsid) may hold stdout open, and on 3.11 wait() waits for the pipes too.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await process.wait()


async def _wait_exit(process: asyncio.subprocess.Process, seconds: float) -> None:
    """Wait up to `seconds` for the process itself to exit (not for its pipes to close)."""
    deadline = time.monotonic() + seconds
    # Polling, because the only public awaitable (wait()) also waits for the pipes.
    while process.returncode is None and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
