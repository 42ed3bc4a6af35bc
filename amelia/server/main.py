"""`create_app()` and the lifespan that starts and stops the server's parts in order.

Start: configuration -> database (embedded when no URL) -> schema at head (upgraded on the
embedded default or with --migrate, else refused with the fix) -> defaults seeded ->
checkpointer pool -> LISTEN connection, event relay -> orchestrator and its supervisor
(process registration, claims, leases) -> retention -> start-up recovery (claiming the runs
whose owner's lease expired).
Stop, in reverse: refuse new work, stop the producers (workflow tasks, which hands their runs
to the other processes; retention), then close the sockets and pools, so the last events are
delivered before anything closes.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from amelia import __version__
from amelia.server.checkpoint import CheckpointStore, setup_checkpoint_tables
from amelia.server.cluster.event_relay import EventRelay
from amelia.server.cluster.listener import Listener
from amelia.server.cluster.supervisor import RunSupervisor
from amelia.server.config import ServerConfig, load_config
from amelia.server.database.connection import Database
from amelia.server.database.event_feed import EventFeedRepository
from amelia.server.database.migrations import head_revision, status, upgrade
from amelia.server.database.process_registry import ProcessRegistry
from amelia.server.database.seed import seed_defaults
from amelia.server.database_target import DatabaseTarget, database_target
from amelia.server.error_handlers import configure_exception_handlers
from amelia.server.events.bus import EventBus
from amelia.server.input_guard import BodySizeLimit, refuse_nul_characters
from amelia.server.orchestrator.service import OrchestratorService
from amelia.server.services import AppServices

logger = logging.getLogger(__name__)


class SchemaBehindError(RuntimeError):
    """The configured database is not at the code's migration head."""


async def prepare_schema(target: DatabaseTarget, db: Database, *, migrate: bool) -> None:
    """Bring the schema to head (embedded default or `migrate`), or refuse with the fix."""
    async with db.connection() as conn:
        current = await status(conn)
    if not current.at_head:
        if target.embedded is None and not migrate:
            raise SchemaBehindError(
                f"The database ({target.description}) is at "
                f"{current.current or 'no revision'}, but this version of Amelia needs "
                f"{current.head}. Run `alembic upgrade head` (or `amelia db upgrade`), or "
                "start with `amelia serve --migrate`."
            )
        logger.info("upgrading %s to %s", target.description, head_revision())
        await upgrade(target.url)
    await setup_checkpoint_tables(target.url)
    async with db.connection() as conn:
        await conn.run_sync(seed_defaults)


async def _start_retention(services: AppServices, stack: AsyncExitStack) -> None:
    try:
        from amelia.server.lifecycle.retention import LogRetentionService
    except ImportError:  # pragma: no cover - the module ships with the package
        return
    from amelia.server.database.settings_repository import SettingsRepository

    retention = LogRetentionService(
        services.db, services.checkpoints, SettingsRepository(services.db)
    )
    services.extras["retention"] = retention
    retention.start()
    stack.push_async_callback(retention.stop)


def build_lifespan(config: ServerConfig | None, migrate: bool, first_run: str) -> Any:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        cfg = config or load_config()
        async with AsyncExitStack() as stack:
            target_cm = database_target(cfg)
            target = await asyncio.to_thread(target_cm.__enter__)
            stack.push_async_callback(asyncio.to_thread, target_cm.__exit__, None, None, None)
            logger.info("Amelia %s using %s", __version__, target.description)

            db = Database.from_config(cfg, target.url)
            await db.connect()
            stack.push_async_callback(db.close)
            await prepare_schema(target, db, migrate=migrate)
            if first_run != "off":
                from amelia.cli_config import ensure_default_profile

                # A new user gets a usable profile; asked for its values only on a terminal.
                await ensure_default_profile(db, interactive=first_run == "interactive")

            checkpoints = CheckpointStore.from_config(cfg, target.url)
            saver = await checkpoints.open()
            stack.push_async_callback(checkpoints.close)
            await checkpoints.verify_tables()

            bus = EventBus()
            # One LISTEN connection: new events of every process, work to claim, commands.
            listener = Listener(target.url, f"{cfg.db_application_name}-listen")
            relay = EventRelay(EventFeedRepository(db), bus, listener)
            orchestrator = OrchestratorService(
                db,
                saver,
                bus,
                process_id=uuid.uuid4(),
                lease_seconds=cfg.lease_seconds,
                max_takeovers=cfg.max_takeovers,
                relayed=True,
            )
            orchestrator.emitter.publish_live = relay.publish_live
            supervisor = RunSupervisor(
                orchestrator,
                ProcessRegistry(db),
                listener,
                heartbeat_seconds=cfg.heartbeat_seconds,
                claim_poll_seconds=cfg.claim_poll_seconds,
                address=f"{cfg.host}:{cfg.port}",
            )
            await listener.start()
            stack.push_async_callback(listener.stop)
            relay.start()
            stack.push_async_callback(relay.stop)
            services = AppServices(
                config=cfg,
                db=db,
                bus=bus,
                checkpoints=checkpoints,
                orchestrator=orchestrator,
                database_description=target.description,
            )
            services.extras["relay"] = relay
            services.extras["listener"] = listener
            for hook in app.state.startup_hooks:
                await hook(services, stack)
            await _start_retention(services, stack)
            await supervisor.start()
            stack.push_async_callback(supervisor.stop)
            # Runs whose owner died (this server before a restart, say) resume here.
            await orchestrator.recover_interrupted_workflows()
            app.state.services = services
            try:
                yield
            finally:
                services.shutting_down = True
                await services.orchestrator.cancel_all_workflows(timeout=10)
                for hook in reversed(app.state.shutdown_hooks):
                    await hook(services)
                app.state.services = None

    return lifespan


def create_app(
    config: ServerConfig | None = None, *, migrate: bool = False, first_run: str = "off"
) -> FastAPI:
    """The Amelia FastAPI application (configuration is read at start when not given).

    Args:
        config: the settings; read from the environment at start when None.
        migrate: upgrade a configured database that is behind head instead of refusing it.
        first_run: "off", "quiet" or "interactive": whether (and how) to create a default
            profile when the database has none (`amelia serve` uses quiet or interactive).
    """
    app = FastAPI(
        title="Amelia API",
        version=__version__,
        docs_url="/api/docs",
        redoc_url="/api/redoc",
        openapi_url="/api/openapi.json",
        lifespan=build_lifespan(config, migrate, first_run),
        dependencies=[Depends(refuse_nul_characters)],
    )
    app.state.services = None
    app.state.startup_hooks = []
    app.state.shutdown_hooks = []
    app.add_middleware(
        CORSMiddleware,
        allow_origin_regex=r"http://(127\.0\.0\.1|localhost)(:\d+)?",
        allow_credentials=True,
        allow_methods=["*"],
        allow_headers=["*"],
    )
    app.add_middleware(BodySizeLimit)  # outermost: an oversized body is refused unread
    configure_exception_handlers(app)
    from amelia.server.routes import register_routes

    register_routes(app)
    return app


async def drain(app: FastAPI) -> None:
    """Stop producing, then deliver what is queued: run before the HTTP server closes sockets.

    uvicorn closes every WebSocket before the lifespan's shutdown runs, so the last events
    of the workflows being stopped would otherwise be lost.
    """
    services: AppServices | None = getattr(app.state, "services", None)
    if services is None:
        return
    services.shutting_down = True
    await services.orchestrator.cancel_all_workflows(timeout=10)
    brainstorm = services.extras.get("brainstorm")
    if brainstorm is not None:
        await brainstorm.stop()
    relay = services.extras.get("relay")
    if relay is not None:
        await relay.flush()
    manager = services.extras.get("ws")
    if manager is not None:
        await manager.close_all()
