"""Several processes on one database: claims per second, cross-process event delivery.

- Claims: 5,000 runnable workflows claimed one per transaction (then 8 per transaction) by
  4 claimers at once, as the processes' claimers do (advisory lock, count, SKIP LOCKED).
- Delivery delay: a writer process saves 2,000 events at 200/s; this process's
  `EventRelay` (LISTEN, read back from the table, onto the bus) receives them. The delay is
  from the writer's commit (its clock) to the bus here (same machine clock).
- Write throughput: writer processes save events as fast as they can for a few seconds,
  with no LISTEN session, with one relay and with three relays listening (each reading
  every event back), alternating (ABBA); the goal is at least 80% of the throughput without.
  The writers announce their events in batches (database/event_hints.py); the figures
  record how many notifications carried them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import text

from amelia.server.cluster.event_relay import EventRelay
from amelia.server.cluster.listener import Listener
from amelia.server.database import Database
from amelia.server.database.event_feed import EventFeedRepository
from amelia.server.database.run_leases import RunLeaseRepository
from amelia.server.events.bus import EventBus
from amelia.server.models.events import WorkflowEvent

ROOT = Path(__file__).resolve().parents[1]
CLAIM_ROWS = 5000
CLAIMERS = 4
DELAY_EVENTS = 2000
DELAY_RATE = 200.0
THROUGHPUT_SECONDS = 4.0
THROUGHPUT_WRITERS = 2
ROUNDS = 6


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def _seed_runnable(db: Database, count: int) -> None:
    async with db.transaction() as conn:
        await conn.execute(text("DELETE FROM workflows"))
        await conn.execute(
            text(
                "INSERT INTO workflows (id, issue_id, worktree_path, status, created_at)"
                " SELECT gen_random_uuid(), 'BENCH', '/bench/' || n, 'in_progress',"
                " now() - n * interval '1 ms' FROM generate_series(1, :count) AS n"
            ),
            {"count": count},
        )


async def _claims(db: Database, batch: int) -> dict[str, Any]:
    await _seed_runnable(db, CLAIM_ROWS)
    leases = RunLeaseRepository(db)
    claimed: list[uuid.UUID] = []

    async def claimer() -> None:
        owner = uuid.uuid4()
        while True:
            tokens = await leases.claim_runnable(owner, 60.0, 10**9, batch)
            if not tokens:
                return
            claimed.extend(token.workflow_id for token in tokens)

    started = time.perf_counter()
    await asyncio.gather(*(claimer() for _ in range(CLAIMERS)))
    elapsed = time.perf_counter() - started
    return {
        "batch": batch,
        "claimers": CLAIMERS,
        "claimed": len(claimed),
        "distinct": len(set(claimed)),
        "claims_per_s": len(claimed) / elapsed,
    }


async def _new_workflow(db: Database) -> uuid.UUID:
    workflow_id = uuid.uuid4()
    async with db.connection() as conn:
        await conn.execute(
            text(
                "INSERT INTO workflows (id, issue_id, worktree_path, status)"
                " VALUES (:id, 'BENCH', :tree, 'blocked')"
            ),
            {"id": workflow_id, "tree": f"/bench/{workflow_id}"},
        )
    return workflow_id


async def _writer(url: str, workflow_id: uuid.UUID, mode: str, amount: float) -> list[Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.event_writer",
        url,
        str(workflow_id),
        mode,
        str(amount),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"event writer failed: {err.decode()[-2000:]}")
    result: list[Any] = json.loads(out)
    return result


async def _relay(url: str, db: Database, bus: EventBus) -> tuple[Listener, EventRelay]:
    listener = Listener(url, "amelia-bench-listen")
    relay = EventRelay(EventFeedRepository(db), bus, listener)
    await listener.start()
    relay.start()
    return listener, relay


async def _delivery_delay(url: str, db: Database) -> dict[str, Any]:
    bus = EventBus()
    arrived: dict[int, float] = {}
    all_arrived = asyncio.Event()
    workflow_id = await _new_workflow(db)

    def record(event: WorkflowEvent) -> None:
        if event.workflow_id == workflow_id:
            arrived[event.sequence] = time.time()
            if len(arrived) >= DELAY_EVENTS:
                all_arrived.set()

    bus.subscribe(record)
    listener, relay = await _relay(url, db, bus)
    try:
        committed = await _writer(url, workflow_id, f"rate:{DELAY_RATE}", DELAY_EVENTS)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_arrived.wait(), timeout=30)
    finally:
        await relay.stop()
        await listener.stop()
    delays = [(arrived[seq] - at) * 1000 for seq, at in committed if seq in arrived]
    return {
        "events": DELAY_EVENTS,
        "delivered": len(arrived),
        "rate_per_s": DELAY_RATE,
        "p50_ms": statistics.median(delays),
        "p99_ms": _percentile(delays, 0.99),
        "max_ms": max(delays),
    }


async def _throughput(url: str, db: Database, listeners: int) -> tuple[float, int]:
    """Events written per second, and the notifications that announced them."""
    relays = [await _relay(url, db, EventBus()) for _ in range(listeners)]
    try:
        ids = [await _new_workflow(db) for _ in range(THROUGHPUT_WRITERS)]
        counts = await asyncio.gather(
            *(_writer(url, wid, "burst", THROUGHPUT_SECONDS) for wid in ids)
        )
    finally:
        for listener, relay in relays:
            await relay.stop()
            await listener.stop()
    events = sum(int(c[0]) for c in counts)
    return events / THROUGHPUT_SECONDS, sum(int(c[1]) for c in counts)


async def run(url: str) -> dict[str, Any]:
    async with Database(url, min_size=1, max_size=8, application_name="amelia-bench") as db:
        claims = [await _claims(db, 1), await _claims(db, 8)]
        delay = await _delivery_delay(url, db)
        rounds: dict[int, list[float]] = {0: [], 1: [], 3: []}
        notified: dict[int, list[int]] = {0: [], 1: [], 3: []}
        for round_number in range(ROUNDS):
            # ABBA order: the machine drifts (the table grows, the WAL cycles), and a fixed
            # order would always give the same setting the later, slower slot.
            order = list(rounds) if round_number % 2 == 0 else list(reversed(rounds))
            for listeners in order:
                per_s, notifications = await _throughput(url, db, listeners)
                rounds[listeners].append(per_s)
                notified[listeners].append(notifications)
    base = statistics.median(rounds[0])
    events = sum(sum(figures) for figures in rounds.values()) * THROUGHPUT_SECONDS
    return {
        "claims": claims,
        "delivery": delay,
        "write_throughput": {
            "writers": THROUGHPUT_WRITERS,
            "seconds": THROUGHPUT_SECONDS,
            "rounds": ROUNDS,
            "per_s": {str(n): statistics.median(figures) for n, figures in rounds.items()},
            "ratio": {str(n): statistics.median(figures) / base for n, figures in rounds.items()},
            "all_rounds": {str(n): figures for n, figures in rounds.items()},
            "events_per_notification": events / max(sum(map(sum, notified.values())), 1),
        },
    }


def render(section: dict[str, Any]) -> list[str]:
    lines = [
        "## Several processes: claims and cross-process events",
        "",
        "PostgreSQL on loopback; writers are separate OS processes, the relay runs in the "
        "benchmark process (LISTEN `amelia_events`, rows read back from `workflow_log`).",
        "",
        "| Claims | claimers | claimed (distinct) | claims/s |",
        "|---|---:|---:|---:|",
    ]
    for claim in section["claims"]:
        lines.append(
            f"| {claim['batch']} per transaction | {claim['claimers']} | "
            f"{claim['claimed']:,} ({claim['distinct']:,}) | {claim['claims_per_s']:,.0f} |"
        )
    delivery = section["delivery"]
    throughput = section["write_throughput"]
    lines += [
        "",
        f"- Commit on the writer process to delivery on this process's bus, "
        f"{delivery['events']:,} events at {delivery['rate_per_s']:.0f}/s: "
        f"**p50 {delivery['p50_ms']:.2f} ms, p99 {delivery['p99_ms']:.2f} ms** "
        f"(max {delivery['max_ms']:.1f} ms; {delivery['delivered']:,} delivered).",
        f"- Event writes, {throughput['writers']} writer processes for "
        f"{throughput['seconds']:.0f} s (median of {throughput['rounds']} rounds): "
        f"{throughput['per_s']['0']:,.0f}/s without listeners; with one relay listening "
        f"{throughput['per_s']['1']:,.0f}/s (**{throughput['ratio']['1']:.0%}**), with three "
        f"{throughput['per_s']['3']:,.0f}/s (**{throughput['ratio']['3']:.0%}**); goal: at "
        f"least 80% ({'met' if min(throughput['ratio'].values()) >= 0.8 else 'NOT met'}). "
        "PostgreSQL wakes every listening session on each notifying commit, so the writers "
        "announce their events in batches: "
        f"{throughput.get('events_per_notification', 1):.1f} events per notification here.",
        "",
    ]
    return lines
