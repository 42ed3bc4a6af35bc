"""Benchmark plumbing: a scratch database, timing, and the results files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.pg import create_database, drop_database, migrate_to_head, postgres_server, with_database

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LATEST = RESULTS_DIR / "latest.json"
RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"


@dataclass
class Timing:
    """Latency figures of one measured call, in microseconds."""

    name: str
    samples: int
    median_us: float
    p99_us: float
    mean_us: float
    extra: dict[str, Any] = field(default_factory=dict)


def summarise(name: str, samples_ns: list[int], **extra: Any) -> Timing:
    ordered = sorted(samples_ns)
    p99_index = min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))
    return Timing(
        name=name,
        samples=len(ordered),
        median_us=statistics.median(ordered) / 1000,
        p99_us=ordered[p99_index] / 1000,
        mean_us=statistics.fmean(ordered) / 1000,
        extra=extra,
    )


async def measure(
    name: str,
    call: Callable[[int], Awaitable[object]],
    iterations: int,
    warmup: int = 20,
    **extra: Any,
) -> Timing:
    """Time `call(i)` sequentially `iterations` times after `warmup` untimed calls."""
    for i in range(warmup):
        await call(i)
    samples: list[int] = []
    for i in range(warmup, warmup + iterations):
        started = time.perf_counter_ns()
        await call(i)
        samples.append(time.perf_counter_ns() - started)
    return summarise(name, samples, **extra)


def machine_facts(server_version: str | None = None) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }
    with suppress(ValueError, OSError):
        facts["memory_gib"] = round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1
        )
    if server_version:
        facts["postgresql"] = server_version
    with suppress(OSError, subprocess.CalledProcessError):
        facts["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    return facts


@contextmanager
def bench_database(prefix: str = "amelia_bench") -> Iterator[str]:
    """A migrated scratch database on the benchmark server; dropped afterwards.

    The server is `AMELIA_BENCH_DATABASE_URL`, else `AMELIA_TEST_DATABASE_URL`, else
    testcontainers or the embedded server (as for the tests).
    """
    bench_url = os.environ.get("AMELIA_BENCH_DATABASE_URL", "").strip()
    if bench_url:
        os.environ["AMELIA_TEST_DATABASE_URL"] = bench_url
    with postgres_server() as (admin_url, _source):
        name = create_database(admin_url, prefix=prefix)
        try:
            url = with_database(admin_url, name)
            migrate_to_head(url)
            yield url
        finally:
            drop_database(admin_url, name)


def load_results() -> dict[str, Any]:
    if LATEST.exists():
        loaded: dict[str, Any] = json.loads(LATEST.read_text())
        return loaded
    return {}


def save_section(section: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Merge one suite's figures into latest.json (other suites' figures are kept)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    results = load_results()
    results[section] = payload
    LATEST.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


def timing_dict(timing: Timing) -> dict[str, Any]:
    return asdict(timing)
