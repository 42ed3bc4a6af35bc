"""Checkpoint write+read throughput: our pooled saver against the stock one (issue: workflows
on PostgreSQL checkpoints).

20 workflows run at once; each takes STEPS steps, a step being one `aput` of a realistic
implementation-pipeline checkpoint (a plan of a few KB inline, an issue and a design as blobs,
append-only history/tool-call lists that grow every step) followed by `aget_tuple` of the
thread's latest checkpoint, as a graph does when it resumes. Every saver runs the same work in
the same process, alternating, ROUNDS times; the median round counts:

- `stock`: `AsyncPostgresSaver.from_conn_string` (one connection, its global lock, its
  statements, the server's settings);
- `pooled`: `CheckpointStore` as the server opens it (its own pool of POOL_MAX connections,
  `PooledPostgresSaver`: no global lock, one statement per call, lz4 for large values);
- `pooled_check`: the same with `check_connections=True`, to show what a check round trip on
  every checkout would cost.

Each round also records the CPU it took per operation in this process and in the server's
backends, and how busy other processes kept the (shared) machine meanwhile: on a small host
the ratio is bounded by CPU, not by round trips, and those figures show where it went.

Two scenarios: `local` (the server on this host: round trips cost almost nothing, so the run is
CPU-bound and the saver's lock costs least) and `remote` (the same server behind a delay
proxy in its own process, round trip about 1 ms, like a database on another host).

`python -m bench.checkpoints` runs it alone on a scratch database and prints the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import CheckpointMetadata, empty_checkpoint
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg import AsyncConnection
from sqlalchemy.engine import URL

from amelia.server.checkpoint import CheckpointStore, checkpoint_serializer, setup_checkpoint_tables
from amelia.server.config import parse_database_url, psycopg_conninfo
from bench.common import summarise, timing_dict
from bench.cpu_meter import CpuMeter

WORKFLOWS = 20
STEPS = 40
WARMUP_STEPS = 3
ROUNDS = 5
POOL_MAX = 10  # the default AMELIA_CHECKPOINT_POOL_MAX_SIZE
GOAL_RATIO = 2.0
PROJECT_ROOT = Path(__file__).resolve().parents[1]
PROXY_DELAY_S = 0.001  # server -> client only; gives a round trip of about 1 ms

_PLAN = "\n".join(
    f"### Task {n}\n- Edit `amelia/module_{n}.py`: {'add the handler and its tests; ' * 4}"
    for n in range(1, 25)
)
_ISSUE = {
    "id": "AMEL-412",
    "title": "Checkpoint bloat when the developer loops",
    "description": "The developer node returns copies of earlier tool calls. " * 30,
    "labels": ["bug", "pipeline"],
}
_DESIGN = {"title": "Reducer-safe tool calls", "body": "Return only new items. " * 80}


def _values(step: int) -> dict[str, Any]:
    """The channel values of a workflow after `step` steps (lists grow with the steps)."""
    calls = [
        {"id": f"call-{n}", "tool": "edit_file", "args": {"path": f"src/m{n}.py", "line": n}}
        for n in range(3 * (step + 1))
    ]
    return {
        "workflow_id": "wf",
        "profile_id": "default",
        "status": "running",
        "plan_markdown": _PLAN,
        "issue": _ISSUE,
        "design": _DESIGN,
        "history": [{"agent": "developer", "message": f"step {n} done " * 8} for n in range(step)],
        "tool_calls": calls,
        "tool_results": [{"call_id": c["id"], "output": "ok " * 40} for c in calls],
        "current_task_index": step // 5,
        "human_approved": True,
        "review_iteration": step // 10,
    }


# Channels each step rewrites; the others keep their first version (and blob).
_CHANGING = ("history", "tool_calls", "tool_results", "current_task_index", "review_iteration")


async def _workflow(saver: AsyncPostgresSaver, steps: int, samples: list[int] | None) -> None:
    thread_id = str(uuid.uuid4())
    latest: RunnableConfig = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    config = latest
    versions: dict[str, int] = {}
    for step in range(steps):
        values = _values(step)
        changed = list(values) if step == 0 else list(_CHANGING)
        for channel in changed:
            versions[channel] = versions.get(channel, 0) + 1
        checkpoint = empty_checkpoint()
        # The version LangGraph's runtime writes; base's `empty_checkpoint` still says 2, and
        # the saver runs a second (pending-sends migration) query on every read of those.
        checkpoint["v"] = 4
        checkpoint["channel_values"] = values
        checkpoint["channel_versions"] = {ch: f"{v:032d}.0" for ch, v in versions.items()}
        new_versions = {ch: checkpoint["channel_versions"][ch] for ch in changed}
        started = time.perf_counter_ns()
        metadata: CheckpointMetadata = {"source": "loop", "step": step}
        config = await saver.aput(config, checkpoint, metadata, new_versions)
        loaded = await saver.aget_tuple(latest)
        if samples is not None:
            samples.append(time.perf_counter_ns() - started)
        if loaded is None or loaded.checkpoint["id"] != checkpoint["id"]:
            raise RuntimeError(f"{thread_id}: read back the wrong checkpoint at step {step}")


async def _round(saver: AsyncPostgresSaver) -> tuple[float, list[int]]:
    samples: list[int] = []
    started = time.perf_counter()
    await asyncio.gather(*(_workflow(saver, STEPS, samples) for _ in range(WORKFLOWS)))
    return time.perf_counter() - started, samples


def _stock(conninfo: str) -> AbstractAsyncContextManager[AsyncPostgresSaver]:
    return AsyncPostgresSaver.from_conn_string(conninfo, serde=checkpoint_serializer())


def _pooled(conninfo: str, check: bool) -> Callable[[], AbstractAsyncContextManager[Any]]:
    @asynccontextmanager
    async def opened() -> AsyncIterator[AsyncPostgresSaver]:
        store = CheckpointStore(
            conninfo, min_size=POOL_MAX, max_size=POOL_MAX, check_connections=check
        )
        async with store:
            yield store.saver

    return opened


async def _delay_proxy(host: str, port: int, delay: float) -> None:
    """Relay TCP to host:port, holding every chunk from the server back `delay` seconds.

    One direction only: asyncio's timers have millisecond granularity, so this is how the
    round trip stays near 1 ms. Prints the port it listens on, then serves until killed.
    """
    loop = asyncio.get_running_loop()

    async def relay(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def forward() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
            writer.close()

        forwarding = asyncio.create_task(forward())
        while data := await reader.read(1 << 18):
            queue.put_nowait((loop.time() + delay, data))
        queue.put_nowait((loop.time(), b""))
        await forwarding

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(host, port)
        with contextlib.suppress(ConnectionError):
            await asyncio.gather(relay(client_r, server_w, 0), relay(server_r, client_w, delay))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


@contextlib.contextmanager
def _latency(url: URL, delay: float) -> Iterator[URL]:
    """`url` reached through a delay proxy in its own process (so it has its own CPU)."""
    command = [sys.executable, "-m", "bench.checkpoints", "--proxy"]
    command += [url.host or "127.0.0.1", str(url.port or 5432), str(delay)]
    proxy = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proxy.stdout is not None
        port = proxy.stdout.readline().strip()
        if not port.isdigit():
            raise RuntimeError("the latency proxy did not start")
        yield url.set(host="127.0.0.1", port=int(port))
    finally:
        proxy.terminate()
        proxy.wait(10)


def _median(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.median(known) if known else None


async def _round_trip_ms(conninfo: str) -> float:
    async with await AsyncConnection.connect(conninfo, autocommit=True) as conn:
        samples = []
        for _ in range(50):
            started = time.perf_counter()
            await conn.execute("SELECT 1")
            samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


async def _scenario(conninfo: str) -> dict[str, Any]:
    savers: dict[str, Callable[[], AbstractAsyncContextManager[AsyncPostgresSaver]]] = {
        "stock": lambda: _stock(conninfo),
        "pooled": _pooled(conninfo, check=False),
        "pooled_check": _pooled(conninfo, check=True),
    }
    elapsed: dict[str, list[float]] = {name: [] for name in savers}
    samples: dict[str, list[int]] = {name: [] for name in savers}
    cpu: dict[str, list[dict[str, Any]]] = {name: [] for name in savers}
    steps_total = WORKFLOWS * STEPS
    async with await AsyncConnection.connect(conninfo, autocommit=True) as observer:
        meter = CpuMeter(observer)
        for _ in range(ROUNDS):
            for name, open_saver in savers.items():
                async with open_saver() as saver:
                    # Warm the connections and prepared statements outside the timed round.
                    warmup = (_workflow(saver, WARMUP_STEPS, None) for _ in range(4))
                    await asyncio.gather(*warmup)
                    timed = _round(saver)
                    (seconds, round_samples), round_cpu = await meter.measure(
                        timed, 2 * steps_total
                    )
                elapsed[name].append(seconds)
                samples[name].extend(round_samples)
                cpu[name].append(round_cpu)

    variants: dict[str, Any] = {}
    for name in savers:
        seconds = statistics.median(elapsed[name])
        variants[name] = {
            "seconds_median": seconds,
            "rounds_seconds": elapsed[name],
            "ops_per_s": 2 * steps_total / seconds,  # aput + aget_tuple
            "steps_per_s": steps_total / seconds,
            "step": timing_dict(summarise(f"checkpoint_step_{name}", samples[name])),
            "cpu": {key: _median([c[key] for c in cpu[name]]) for key in cpu[name][0]},
            "rounds_cpu": cpu[name],
        }
    stock = variants["stock"]["ops_per_s"]
    return {
        "round_trip_ms": await _round_trip_ms(conninfo),
        "savers": variants,
        "ratio_pooled": variants["pooled"]["ops_per_s"] / stock,
        "ratio_pooled_check": variants["pooled_check"]["ops_per_s"] / stock,
        # Each round's stock and pooled runs follow each other: their ratio sees similar load.
        "rounds_ratio_pooled": [
            stock_s / pooled_s
            for stock_s, pooled_s in zip(elapsed["stock"], elapsed["pooled"], strict=True)
        ],
    }


async def run(url: str) -> dict[str, Any]:
    """Run the suite against the database at `url`; returns the JSON section."""
    parsed = parse_database_url(url)
    conninfo = psycopg_conninfo(parsed)
    await setup_checkpoint_tables(conninfo)
    async with await AsyncConnection.connect(conninfo) as conn:
        cur = await conn.execute("SHOW server_version")
        row = await cur.fetchone()
        server_version = str(row[0]) if row else "?"

    scenarios = {"local": await _scenario(conninfo)}
    with _latency(parsed, PROXY_DELAY_S) as proxied:
        scenarios["remote"] = await _scenario(psycopg_conninfo(proxied))
    return {
        "server_version": server_version,
        "workflows": WORKFLOWS,
        "steps_per_workflow": STEPS,
        "rounds": ROUNDS,
        "pool_max_size": POOL_MAX,
        "checkpoint_json_bytes": {
            "first_step": len(json.dumps(_values(0))),
            "last_step": len(json.dumps(_values(STEPS - 1))),
        },
        "scenarios": scenarios,
        "ratio_pooled": scenarios["local"]["ratio_pooled"],
        "ratio_pooled_remote": scenarios["remote"]["ratio_pooled"],
        "goal_ratio": GOAL_RATIO,
    }


def render(section: dict[str, Any]) -> list[str]:
    """Markdown lines for bench/RESULTS.md."""
    sizes = section["checkpoint_json_bytes"]
    remote_rtt = section["scenarios"]["remote"]["round_trip_ms"]
    lines = [
        "## Checkpoints: pooled saver vs stock `AsyncPostgresSaver`",
        "",
        f"PostgreSQL {section['server_version']}. {section['workflows']} concurrent workflows, "
        f"{section['steps_per_workflow']} steps each; a step is `aput` of a checkpoint "
        f"({sizes['first_step'] / 1024:.0f} KB growing to {sizes['last_step'] / 1024:.0f} KB "
        "as JSON) then `aget_tuple` of the latest one. Median of "
        f"{section['rounds']} alternating rounds. `stock`: one connection behind the saver's "
        f"lock; `pooled`: `CheckpointStore`, {section['pool_max_size']} pooled connections, "
        "no global lock, one statement per call, lz4 for large values (`PooledPostgresSaver`); "
        "`pooled_check`: plus a check round trip per checkout. `local`: the "
        "server on this host; `remote`: the same server behind a delay proxy "
        f"(`SELECT 1` round trip {remote_rtt:.1f} ms), like a database on another host.",
        "",
        "CPU per operation (aput or aget_tuple), medians of the rounds: `client` is this "
        "process (savers and the workflows driving them), `server` the benchmark database's "
        "backends, `others` the share of the machine's CPU that other processes took "
        "meanwhile (the cores are shared).",
        "",
        "| Scenario | Saver | ops/s | steps/s | step median | step p99 | client CPU/op "
        "| server CPU/op | others |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(value: float | None, unit: str, scale: float = 1.0) -> str:
        return "-" if value is None else f"{value * scale:.0f}{unit}"

    for scenario, figures in section["scenarios"].items():
        for name, saver in figures["savers"].items():
            step, cpu = saver["step"], saver.get("cpu", {})
            lines.append(
                f"| {scenario} | `{name}` | {saver['ops_per_s']:,.0f} | "
                f"{saver['steps_per_s']:,.0f} | {step['median_us'] / 1000:.1f} ms | "
                f"{step['p99_us'] / 1000:.1f} ms | "
                f"{cell(cpu.get('client_cpu_us_per_op'), ' us')} | "
                f"{cell(cpu.get('server_cpu_us_per_op'), ' us')} | "
                f"{cell(cpu.get('others_busy'), '%', 100)} |"
            )
    lines.append("")
    for scenario, figures in section["scenarios"].items():
        paired = figures.get("rounds_ratio_pooled")
        rounds = f"; round by round {', '.join(f'{r:.2f}' for r in paired)}" if paired else ""
        lines.append(
            f"- {scenario}: pooled / stock throughput **{figures['ratio_pooled']:.2f}x** "
            f"({figures['ratio_pooled_check']:.2f}x with a checkout check{rounds}; goal: at "
            f"least {section['goal_ratio']:g}x)."
        )
    lines.append("")
    return lines


if __name__ == "__main__":
    if sys.argv[1:2] == ["--proxy"]:
        asyncio.run(_delay_proxy(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
        sys.exit(0)
    from bench.common import bench_database

    with bench_database(prefix="amelia_bench_ckpt") as scratch_url:
        print("\n".join(render(asyncio.run(run(scratch_url)))))
