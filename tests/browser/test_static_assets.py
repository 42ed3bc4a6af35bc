"""The dashboard's files as the server serves them: complete, self-contained, right types.

No browser and no database: the app answers `/` and `/assets/...` without its lifespan.
Every module the pages import must be served with a JavaScript type (browsers refuse a
module script served as anything else), and nothing may point at another host.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest

from amelia.server.dashboard import STATIC_DIR
from amelia.server.main import create_app

STATIC_IMPORT = re.compile(r"""(?:import|from)\s*["'](\.{1,2}/[^"']+)["']""")
PAGE_NAMES = re.compile(r"""page:\s*"([a-z]+)""")
EXTERNAL = re.compile(r"""(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}""", re.IGNORECASE)
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://amelia.test") as http:
        yield http


def modules() -> list[str]:
    """Every JavaScript module the dashboard can load, as /assets/ paths."""
    found = {"js/main.js"}
    pending = ["js/main.js"]
    while pending:
        current = pending.pop()
        text = (STATIC_DIR / current).read_text()
        base = current.rsplit("/", 1)[0]
        targets = [m for m in STATIC_IMPORT.findall(text)]
        # main.js loads pages with import(`./pages/${name}.js`) from its route table.
        targets += [f"./pages/{name}.js" for name in PAGE_NAMES.findall(text)]
        for target in targets:
            parts = f"{base}/{target}".split("/")
            resolved: list[str] = []
            for part in parts:
                if part == "..":
                    resolved.pop()
                elif part not in (".", ""):
                    resolved.append(part)
            path = "/".join(resolved)
            if path not in found:
                found.add(path)
                pending.append(path)
    return sorted(found)


async def test_index_and_every_module_are_served(client: httpx.AsyncClient) -> None:
    index = await client.get("/")
    assert index.status_code == 200
    assert index.headers["content-type"].startswith("text/html")
    referenced = re.findall(r"""(?:href|src)="(/assets/[^"]+)\"""", index.text)
    assert "/assets/js/main.js" in referenced and "/assets/app.css" in referenced

    paths = modules()
    assert {"js/pages/workflows.js", "js/pages/costs.js", "js/pages/prompts.js"} <= set(paths)
    for path in [*referenced, *(f"/assets/{p}" for p in paths)]:
        response = await client.get(path)
        assert response.status_code == 200, path
        if path.endswith(".js"):
            assert "javascript" in response.headers["content-type"], path
        assert response.headers.get("cache-control") == "no-cache", path


async def test_nothing_is_fetched_from_another_host() -> None:
    for file in STATIC_DIR.rglob("*"):
        if file.is_file():
            text = file.read_text().replace(SVG_NAMESPACE, "")
            assert not EXTERNAL.search(text), f"{file.name} refers to {EXTERNAL.search(text)}"


async def test_the_api_keeps_its_own_404s(client: httpx.AsyncClient) -> None:
    # The dashboard serves `/` and `/assets/` only: unknown API paths still answer 404.
    assert (await client.get("/api/nothing-here")).status_code == 404
    assert (await client.get("/assets/missing.js")).status_code == 404
    assert "/" not in (await client.get("/api/openapi.json")).json()["paths"]
