"""Health: `/api/health` (real database probe and pool figures), `/live`, `/ready`."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from amelia import __version__
from amelia.server.database.process_registry import ProcessRegistry
from amelia.server.database.repository import WorkflowRepository
from amelia.server.database.run_leases import RunLeaseRepository
from amelia.server.dependencies import Services

router = APIRouter(prefix="/api/health", tags=["health"])
STARTED = time.monotonic()


async def _probe(services: Services) -> tuple[bool, float]:
    started = time.perf_counter()
    healthy = await services.db.is_healthy()
    return healthy, (time.perf_counter() - started) * 1000


def _checkpoint_pool(services: Services) -> dict[str, Any]:
    try:
        pool = services.checkpoints.pool
    except RuntimeError:
        return {"open": False}
    stats = pool.get_stats()
    size = int(stats.get("pool_size", 0))
    available = int(stats.get("pool_available", 0))
    return {
        "open": True,
        "size": size,
        "checked_out": size - available,
        "idle": available,
        "waiting": int(stats.get("requests_waiting", 0)),
        "max_size": pool.max_size,
    }


def _this_process(services: Services) -> dict[str, Any]:
    orchestrator = services.orchestrator
    relay = services.extras.get("relay")
    listener = services.extras.get("listener")
    return {
        "id": str(orchestrator.process_id),
        "running": [str(wid) for wid in orchestrator.get_active_workflows()],
        "refused_writes": orchestrator.refused_writes,
        "listen_connected": bool(listener and listener.connected),
        "listen_reconnects": listener.reconnects if listener else 0,
        "events_relayed": relay.delivered_count if relay else 0,
        # Events found by the periodic sweep because their hint never arrived.
        "events_swept": relay.swept_count if relay else 0,
        "event_hints_pending": services.db.event_hints.pending,
        "event_notifications_sent": services.db.event_hints.sent_notifications,
    }


async def _processes(services: Services) -> list[dict[str, Any]]:
    """Every registered server process, whether it is alive and the runs it owns."""
    processes = await ProcessRegistry(services.db).list_processes(services.config.lease_seconds)
    owned = await RunLeaseRepository(services.db).owned_runs()
    return [process.as_json(owned.get(process.id, [])) for process in processes]


@router.get("")
async def health(services: Services) -> JSONResponse:
    """Overall health with a real round trip to the database; 503 when it fails."""
    healthy, latency_ms = await _probe(services)
    body: dict[str, Any] = {
        "status": "healthy" if healthy and not services.shutting_down else "unhealthy",
        "version": __version__,
        "uptime_seconds": round(time.monotonic() - STARTED, 1),
        "database": {
            "status": "connected" if healthy else "unreachable",
            "target": services.database_description,
            "latency_ms": round(latency_ms, 2),
            "pool": services.db.pool_status(),
        },
        "checkpoint_pool": _checkpoint_pool(services),
        "workflows": {"running_in_this_process": len(services.orchestrator.get_active_workflows())},
        "process": _this_process(services),
    }
    if healthy:
        body["workflows"]["active"] = await WorkflowRepository(services.db).count_active()
        body["processes"] = await _processes(services)
    return JSONResponse(body, status_code=200 if body["status"] == "healthy" else 503)


@router.get("/live")
async def live() -> dict[str, str]:
    """The process answers (no dependency checked)."""
    return {"status": "alive"}


@router.get("/ready")
async def ready(services: Services) -> JSONResponse:
    """Ready for traffic: the database answers and the server is not shutting down."""
    healthy, _ = await _probe(services)
    if services.shutting_down:
        return JSONResponse({"status": "shutting_down"}, status_code=503)
    if not healthy:
        return JSONResponse({"status": "database_unavailable"}, status_code=503)
    return JSONResponse({"status": "ready"})
