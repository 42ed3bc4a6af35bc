"""Health endpoints probe the real database."""

from __future__ import annotations

import httpx

from amelia.server.services import AppServices


async def test_health_reports_database_and_pools(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["database"]["status"] == "connected"
    assert body["database"]["latency_ms"] >= 0
    assert body["database"]["pool"]["max_size"] == 5
    assert body["checkpoint_pool"]["open"] is True
    assert body["workflows"]["active"] == 0


async def test_live_and_ready(client: httpx.AsyncClient, services: AppServices) -> None:
    assert (await client.get("/api/health/live")).json() == {"status": "alive"}
    assert (await client.get("/api/health/ready")).status_code == 200
    services.shutting_down = True
    try:
        assert (await client.get("/api/health/ready")).status_code == 503
        assert (await client.get("/api/health")).status_code == 503
    finally:
        services.shutting_down = False


async def test_health_is_unhealthy_when_the_database_is_gone(
    client: httpx.AsyncClient, services: AppServices
) -> None:
    await services.db.close()
    response = await client.get("/api/health")
    assert response.status_code == 503
    assert response.json()["database"]["status"] == "unreachable"
    ready = await client.get("/api/health/ready")
    assert ready.status_code == 503
