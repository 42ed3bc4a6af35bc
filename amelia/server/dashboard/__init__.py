"""The dashboard: static pages served by `amelia serve` at `/` (issue 6).

Plain HTML, CSS and JavaScript modules shipped inside the package (no build step, nothing
fetched from the internet). One `index.html` serves every page: the client routes on the URL
hash (`/#/workflows/<id>`), so the server needs only `/` and the files under `/assets/`.
The pages talk to the same API as any other client (`/api/...`, `/ws/events`).
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

STATIC_DIR = Path(__file__).parent / "static"
ASSETS_PREFIX = "/assets"

# The files change with the installed package, not while it runs; revalidating on every
# load keeps an upgraded server from serving a browser's stale module graph.
_NO_STALE = {"Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    """The single page; the hash in the URL chooses what it shows."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_NO_STALE)


class _Assets(StaticFiles):
    """Static files that browsers revalidate (ETag) instead of caching blindly."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(_NO_STALE)
        return response


def install(app: FastAPI) -> None:
    """Serve the dashboard on `app`: `/` and the static files under `/assets/`."""
    app.include_router(router)
    app.mount(ASSETS_PREFIX, _Assets(directory=STATIC_DIR), name="dashboard-assets")
