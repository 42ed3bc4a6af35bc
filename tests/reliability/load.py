"""Request load for the fault scenarios: a mixed workload, every outcome recorded.

`Load` runs workers in a closed loop against a live server; each request's start, end,
status and error are kept so a scenario can say what failed during the fault, how long the
server took to recover, and whether anything failed once it had healed. Writes create
profiles with unique ids; an acknowledged (201) id is a row that must exist afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx

Request = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]


@dataclass(frozen=True)
class Outcome:
    kind: str
    started: float
    ended: float
    status: int | None  # None when no response came (transport error or client timeout)
    error: str | None  # the envelope's code, or the exception's type

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status < 400

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass
class Workload:
    """The requests of the standard mix; `acknowledged` collects ids of stored profiles."""

    workflow_id: uuid.UUID | str
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    acknowledged: list[str] = field(default_factory=list)
    _numbers: itertools.count[int] = field(default_factory=itertools.count)

    def requests(self) -> list[tuple[str, Request]]:
        return [
            ("list", self.list_workflows),
            ("get", self.get_workflow),
            ("settings", self.get_settings),
            ("write", self.create_profile),
        ]

    async def list_workflows(self, client: httpx.AsyncClient, _: int) -> httpx.Response:
        return await client.get("/api/workflows", params={"limit": 5})

    async def get_workflow(self, client: httpx.AsyncClient, _: int) -> httpx.Response:
        return await client.get(f"/api/workflows/{self.workflow_id}")

    async def get_settings(self, client: httpx.AsyncClient, _: int) -> httpx.Response:
        return await client.get("/api/settings")

    async def create_profile(self, client: httpx.AsyncClient, _: int) -> httpx.Response:
        profile_id = f"r{self.tag}-{next(self._numbers)}"
        response = await client.post(
            "/api/profiles",
            json={"id": profile_id, "working_dir": f"/work/{profile_id}", "agents": {}},
        )
        if response.status_code == 201:
            self.acknowledged.append(profile_id)
        return response


async def send(client: httpx.AsyncClient, kind: str, request: Request, n: int) -> Outcome:
    """One request, timed; a transport error or client timeout is an outcome too."""
    started = time.monotonic()
    try:
        response = await request(client, n)
    except httpx.HTTPError as exc:
        return Outcome(kind, started, time.monotonic(), None, type(exc).__name__)
    error = None
    if response.status_code >= 400:
        try:
            body = response.json()
            error = str(body.get("code") or body.get("detail"))
        except ValueError:
            error = response.text[:200]
    return Outcome(kind, started, time.monotonic(), response.status_code, error)


class Load:
    """`workers` tasks sending the workload's requests in turn until `stop()`."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        requests: list[tuple[str, Request]],
        *,
        workers: int = 4,
        pause: float = 0.02,
    ) -> None:
        self._client = client
        self._requests = requests
        self._workers = workers
        self._pause = pause
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False
        self.outcomes: list[Outcome] = []

    def start(self) -> Load:
        self._running = True
        self._tasks = [asyncio.create_task(self._work(w)) for w in range(self._workers)]
        return self

    async def stop(self) -> list[Outcome]:
        """Let the requests in flight finish (each is bounded by the client's timeout)."""
        self._running = False
        await asyncio.gather(*self._tasks)
        return self.outcomes

    async def _work(self, worker: int) -> None:
        for n in itertools.count(worker):
            if not self._running:
                return
            kind, request = self._requests[n % len(self._requests)]
            self.outcomes.append(await send(self._client, kind, request, n))
            await asyncio.sleep(self._pause)


async def in_a_row(
    client: httpx.AsyncClient, requests: list[tuple[str, Request]], count: int
) -> list[Outcome]:
    """`count` requests one after another, cycling through the mix."""
    outcomes = []
    for n in range(count):
        kind, request = requests[n % len(requests)]
        outcomes.append(await send(client, kind, request, n))
    return outcomes


async def first_success_after(
    client: httpx.AsyncClient, request: Request, since: float, timeout: float
) -> float:
    """Poll `request` from now until it succeeds; seconds from `since` to that success."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outcome = await send(client, "probe", request, 0)
        if outcome.ok:
            return outcome.ended - since
        await asyncio.sleep(0.05)
    raise AssertionError(f"no successful request within {timeout} s")


def failures(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if not o.ok]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


@contextlib.asynccontextmanager
async def http(base_url: str, timeout: float) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose every request gives up after `timeout` seconds (a hang shows as one)."""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits) as client:
        yield client
