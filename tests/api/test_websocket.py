"""`/ws/events` over real sockets: uvicorn in the test loop, `websockets` clients, PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import websockets
from sqlalchemy import text
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from amelia.server.database.repository import WorkflowRepository
from amelia.server.database.settings_repository import SettingsRepository
from amelia.server.events.connection_manager import ConnectionManager
from amelia.server.main import create_app
from amelia.server.models.events import EventDomain, EventType, WorkflowEvent
from amelia.server.models.state import ServerExecutionState
from amelia.server.routes.websocket import install
from amelia.server.services import AppServices
from tests.api import conftest as api_conftest
from tests.api.live_server import LiveServer

TIMEOUT = 10.0


@pytest.fixture
async def live(database_url: str, tmp_path: Path) -> AsyncIterator[LiveServer]:
    app = create_app(api_conftest.test_config(database_url, tmp_path), migrate=True)
    install(app)
    async with LiveServer(app) as server:
        yield server


def manager_of(live: LiveServer) -> ConnectionManager:
    manager = live.services.extras["ws"]
    assert isinstance(manager, ConnectionManager)
    return manager


def open_ws(live: LiveServer, query: str = "", **options: Any) -> Any:
    # No compression: the slow-client test needs real bytes on the wire.
    return connect(live.ws_url(f"/ws/events{query}"), compression=None, proxy=None, **options)


class Client:
    """A `websockets` connection speaking the event protocol (skips server heartbeats)."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn

    async def send(self, message: Any) -> None:
        await self.conn.send(message if isinstance(message, str | bytes) else json.dumps(message))

    async def next(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        while True:
            message: dict[str, Any] = json.loads(await asyncio.wait_for(self.conn.recv(), timeout))
            if message != {"type": "ping"}:
                return message

    async def sync(self) -> list[dict[str, Any]]:
        """Ping and wait for the pong: every message queued before it, in order."""
        await self.send({"type": "ping"})
        seen = []
        while (message := await self.next()) != {"type": "pong"}:
            seen.append(message)
        return seen

    async def events_until(self, last_id: uuid.UUID) -> list[dict[str, Any]]:
        """Every message up to and including the event `last_id`."""
        seen = []
        while True:
            message = await self.next()
            seen.append(message)
            if message.get("type") == "event" and message["payload"]["id"] == str(last_id):
                return seen


async def new_workflow(services: AppServices) -> uuid.UUID:
    state = ServerExecutionState(
        id=uuid.uuid4(),
        issue_id="WS-1",
        worktree_path=f"/repo/{uuid.uuid4().hex}",
        created_at=datetime.now(UTC),
    )
    await WorkflowRepository(services.db).create(state)
    return state.id


async def emit(
    services: AppServices,
    workflow_id: uuid.UUID,
    event_type: EventType = EventType.STAGE_STARTED,
    message: str = "step",
    **data: Any,
) -> WorkflowEvent:
    return await services.orchestrator.emitter.emit(
        workflow_id, event_type, message, data=data or None
    )


def payloads(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m["payload"] for m in messages if m["type"] == "event"]


async def test_ping_pong_and_pong_is_not_answered(live: LiveServer) -> None:
    async with open_ws(live) as conn:
        client = Client(conn)
        await client.send({"type": "pong"})
        assert await client.sync() == []
        assert await client.sync() == []


async def test_malformed_client_messages_get_errors_and_keep_the_connection(
    live: LiveServer,
) -> None:
    services = live.services
    workflow_id = await new_workflow(services)
    async with open_ws(live) as conn:
        client = Client(conn)
        bad: list[Any] = [
            "not json",
            "[1, 2]",
            {"no": "type"},
            {"type": "dance"},
            {"type": "subscribe"},
            {"type": "subscribe", "workflow_id": "nope"},
            {"type": "unsubscribe", "workflow_id": 42},
            b"\x00binary",
        ]
        for message in bad:
            await client.send(message)
            reply = await client.next()
            assert reply["type"] == "error", message
            assert reply["message"]
        # Still open, still subscribed to everything.
        event = await emit(services, workflow_id)
        assert payloads(await client.events_until(event.id))[0]["id"] == str(event.id)


async def test_subscribe_unsubscribe_and_subscribe_all_filter_persisted_events(
    live: LiveServer,
) -> None:
    services = live.services
    a, b = await new_workflow(services), await new_workflow(services)
    async with open_ws(live) as conn:
        client = Client(conn)
        await client.send({"type": "subscribe", "workflow_id": str(a)})
        await client.sync()
        await emit(services, b, message="b hidden")
        a1 = await emit(services, a, message="a seen")
        trace = await emit(services, b, EventType.AGENT_MESSAGE, "b trace reaches everyone")
        seen = payloads(await client.events_until(trace.id))
        assert [(p["id"], p["sequence"]) for p in seen] == [
            (str(a1.id), a1.sequence),
            (str(trace.id), 0),
        ]

        await client.send({"type": "unsubscribe", "workflow_id": str(a)})
        await client.sync()
        await emit(services, a, message="a hidden now")
        marker = await emit(services, a, EventType.AGENT_MESSAGE, "marker")
        assert [p["id"] for p in payloads(await client.events_until(marker.id))] == [str(marker.id)]

        await client.send({"type": "subscribe_all"})
        await client.sync()
        a2 = await emit(services, a, message="a again")
        b2 = await emit(services, b, message="b again")
        assert [p["id"] for p in payloads(await client.events_until(b2.id))] == [
            str(a2.id),
            str(b2.id),
        ]

        # Unsubscribing while subscribed to everything excludes that one workflow.
        await client.send({"type": "unsubscribe", "workflow_id": str(b)})
        await client.sync()
        await emit(services, b, message="b excluded")
        a3 = await emit(services, a, message="a still")
        assert [p["id"] for p in payloads(await client.events_until(a3.id))] == [str(a3.id)]


async def test_two_clients_see_a_workflows_events_live_in_sequence_order(
    live: LiveServer,
) -> None:
    services = live.services
    workflow_id = await new_workflow(services)
    other = await new_workflow(services)
    async with open_ws(live) as first, open_ws(live) as second:
        clients = [Client(first), Client(second)]
        for client in clients:
            await client.send({"type": "subscribe", "workflow_id": str(workflow_id)})
            await client.sync()
        emitted = []
        for i in range(25):
            emitted.append(await emit(services, workflow_id, message=f"step {i}", n=i))
            await emit(services, other, message="elsewhere")
        for client in clients:
            seen = payloads(await client.events_until(emitted[-1].id))
            assert [p["sequence"] for p in seen] == list(range(1, 26))
            assert [p["id"] for p in seen] == [str(e.id) for e in emitted]
            assert seen[3]["data"] == {"n": 3}
            assert seen[3]["workflow_id"] == str(workflow_id)


@pytest.mark.parametrize("round_", range(3))
async def test_reconnect_with_since_replays_missed_events_once_then_goes_live(
    live: LiveServer, round_: int
) -> None:
    services = live.services
    manager_of(live).backfill_page = 4  # several pages, and pages that race the emitter
    workflow_id = await new_workflow(services)
    async with open_ws(live) as conn:
        client = Client(conn)
        first = [await emit(services, workflow_id, message=f"seen {i}") for i in range(3)]
        seen = payloads(await client.events_until(first[-1].id))
        assert [p["sequence"] for p in seen] == [1, 2, 3]
    missed = [await emit(services, workflow_id, message=f"missed {i}") for i in range(10)]

    stop = asyncio.Event()

    async def keep_emitting() -> int:
        count = 0
        while not stop.is_set():
            await emit(services, workflow_id, message=f"racing {count}")
            count += 1
            await asyncio.sleep(0)
        return count

    racer = asyncio.create_task(keep_emitting())
    await asyncio.sleep(0.005 * round_)
    async with open_ws(live, f"?since={seen[-1]['id']}") as conn:
        client = Client(conn)
        backfill = []
        while (message := await client.next())["type"] != "backfill_complete":
            backfill.append(message)
        assert message["count"] == len(backfill) >= len(missed)
        await asyncio.sleep(0.2)  # live events keep flowing past the seam
        stop.set()
        raced = await racer
        last = await emit(services, workflow_id, EventType.WORKFLOW_COMPLETED, "done")
        live_part = await client.events_until(last.id)
    assert raced > 0
    assert all(m["type"] == "event" for m in backfill + live_part)
    backfilled = payloads(backfill)
    assert [p["id"] for p in backfilled[: len(missed)]] == [str(e.id) for e in missed]
    sequences = [p["sequence"] for p in backfilled + payloads(live_part)]
    assert sequences == list(range(4, last.sequence + 1))


async def test_a_late_broadcast_of_a_backfilled_event_is_not_sent_twice(
    live: LiveServer,
) -> None:
    services = live.services
    workflow_id = await new_workflow(services)
    anchor = await emit(services, workflow_id, message="anchor")
    stored = [await emit(services, workflow_id, message=f"stored {i}") for i in range(3)]
    async with open_ws(live, f"?since={anchor.id}") as conn:
        client = Client(conn)
        assert [m["payload"]["id"] for m in [await client.next() for _ in range(3)]] == [
            str(e.id) for e in stored
        ]
        assert await client.next() == {"type": "backfill_complete", "count": 3}
        # The emitter of `stored[2]` resuming after the backfill read it: dropped.
        services.bus.emit(stored[2])
        after = await emit(services, workflow_id, message="after")
        assert [p["id"] for p in payloads(await client.events_until(after.id))] == [str(after.id)]


async def test_live_events_during_a_slow_backfill_follow_backfill_complete(
    live: LiveServer,
) -> None:
    services = live.services
    workflow_id = await new_workflow(services)
    anchor = await emit(services, workflow_id, message="anchor")
    missed = [await emit(services, workflow_id, message=f"missed {i}") for i in range(3)]
    async with services.db.transaction() as locker:
        # Holds the backfill's read (and any event insert) until this transaction ends.
        await locker.execute(text("LOCK TABLE workflow_log IN ACCESS EXCLUSIVE MODE"))
        conn = await open_ws(live, f"?since={anchor.id}")
        async with asyncio.timeout(TIMEOUT):
            # Polls server state: registered on the bus, its backfill read now blocked.
            while manager_of(live).connection_count != 1:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        traces = [
            await emit(services, workflow_id, EventType.AGENT_MESSAGE, f"trace {i}")
            for i in range(5)
        ]
        blocked = asyncio.create_task(emit(services, workflow_id, message="during backfill"))
        await asyncio.sleep(0.2)
        assert not blocked.done()
    async with conn:
        client = Client(conn)
        during = await blocked
        # `during` may come in the backfill or live, depending on who got the lock first.
        wanted = {str(during.id), str(traces[-1].id)}
        messages = []
        while wanted:
            messages.append(await client.next())
            wanted.discard(messages[-1].get("payload", {}).get("id"))
    kinds = [m["type"] for m in messages]
    complete = kinds.index("backfill_complete")
    backfilled = payloads(messages[:complete])
    after = payloads(messages[complete + 1 :])
    assert [p["id"] for p in backfilled[:3]] == [str(e.id) for e in missed]
    assert messages[complete]["count"] == len(backfilled)
    assert [p["id"] for p in after if p["sequence"] == 0] == [str(e.id) for e in traces]
    everything = backfilled + after
    assert [p["id"] for p in everything].count(str(during.id)) == 1
    assert [p["sequence"] for p in everything if p["sequence"]] == [2, 3, 4, 5]


@pytest.mark.parametrize("since", ["not-a-uuid", "", "1234", str(uuid.uuid4())])
async def test_malformed_or_unknown_since_answers_backfill_expired(
    live: LiveServer, since: str
) -> None:
    services = live.services
    workflow_id = await new_workflow(services)
    async with open_ws(live, f"?since={since}") as conn:
        client = Client(conn)
        expired = await client.next()
        assert expired["type"] == "backfill_expired"
        assert expired["message"]
        assert await client.sync() == []
        event = await emit(services, workflow_id)
        assert payloads(await client.events_until(event.id))[0]["sequence"] == event.sequence


async def test_a_backfill_that_cannot_be_read_closes_with_1011_to_retry_later(
    live: LiveServer,
) -> None:
    await live.services.db.close()
    async with open_ws(live, f"?since={uuid.uuid4()}") as conn:
        with pytest.raises(ConnectionClosed) as closed:
            await Client(conn).next()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1011


async def test_a_slow_client_does_not_block_the_bus_or_another_client(
    live: LiveServer,
) -> None:
    services = live.services
    manager = manager_of(live)
    manager.max_queue = 50
    workflow_id = await new_workflow(services)
    chunk = os.urandom(12_000).hex()  # incompressible, 24 kB per frame
    # The slow client never reads: its socket buffers fill, then its queue on the server.
    async with open_ws(live, max_queue=1) as slow_conn, open_ws(live) as fast_conn:
        slow, fast = Client(slow_conn), Client(fast_conn)
        await slow.sync()
        await fast.sync()
        assert manager.connection_count == 2
        received: list[dict[str, Any]] = []
        emitted: list[uuid.UUID] = []
        slowest_emit = 0.0
        loop = asyncio.get_running_loop()
        for batch in range(60):
            for i in range(25):  # half the queue: a client that keeps up never overflows
                started = loop.time()
                event = await emit(
                    services, workflow_id, EventType.AGENT_MESSAGE, chunk, i=batch * 25 + i
                )
                slowest_emit = max(slowest_emit, loop.time() - started)
                emitted.append(event.id)
            while len(received) < len(emitted):
                received.append(await fast.next())
        assert [p["id"] for p in payloads(received)] == [str(e) for e in emitted]
        # Broadcasting only enqueues: no emit waited on the stalled socket.
        assert slowest_emit < 0.5
        assert manager.connection_count == 1  # the slow one was dropped, the fast one stays
        assert await fast.sync() == []
        # What the slow client had buffered is readable, then the connection is gone.
        slow_got = 0
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(slow_conn.recv(), TIMEOUT)
                slow_got += 1
        assert 0 < slow_got < len(emitted)
        # 1013 when the close frame got through before the server's close timeout (it
        # normally does here); after that timeout the server just drops the socket.
        assert closed.value.rcvd is None or closed.value.rcvd.code == 1013


async def test_idle_clients_are_closed_and_pings_keep_a_client_alive(
    live: LiveServer,
) -> None:
    await SettingsRepository(live.services.db).update_server_settings(
        {"websocket_idle_timeout_seconds": 0.6}
    )
    async with open_ws(live) as quiet_conn, open_ws(live) as active_conn:
        active = Client(active_conn)
        loop = asyncio.get_running_loop()
        started = loop.time()
        heartbeats = 0
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                message = json.loads(await asyncio.wait_for(quiet_conn.recv(), TIMEOUT))
                heartbeats += message == {"type": "ping"}
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1000, "idle timeout")
        assert loop.time() - started >= 0.5
        assert heartbeats >= 1
        while loop.time() - started < 2.0:
            assert await active.sync() == []
            await asyncio.sleep(0.2)
    assert manager_of(live).connection_count == 0


async def test_close_all_delivers_queued_events_then_closes(live: LiveServer) -> None:
    services = live.services
    workflow_id = await new_workflow(services)
    async with open_ws(live) as conn:
        client = Client(conn)
        await client.sync()
        emitted = [await emit(services, workflow_id, message=f"last {i}") for i in range(40)]
        # As drain() does at shutdown: the relay hands over what was committed, then close.
        assert await services.extras["relay"].flush()
        await manager_of(live).close_all()
        seen = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                seen.append(await client.next())
        assert [p["id"] for p in payloads(seen)] == [str(e.id) for e in emitted]
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    async with open_ws(live) as late:
        with pytest.raises(ConnectionClosed) as refused:
            await asyncio.wait_for(late.recv(), TIMEOUT)
        assert refused.value.rcvd is not None and refused.value.rcvd.code == 1001


async def test_server_shutdown_with_connected_clients_finishes_promptly(
    live: LiveServer,
) -> None:
    services = live.services
    manager = manager_of(live)
    workflow_id = await new_workflow(services)
    anchor = await emit(services, workflow_id, message="anchor")
    chunk = os.urandom(12_000).hex()
    async with (
        open_ws(live) as idle,
        open_ws(live, f"?since={anchor.id}") as resumed,
        open_ws(live, max_queue=1) as stalled,
    ):
        await Client(idle).sync()
        for i in range(200):  # fills the stalled client's socket buffers
            await emit(services, workflow_id, EventType.AGENT_MESSAGE, chunk, i=i)
        assert manager.connection_count == 3

        async def read_to_the_end(conn: ClientConnection) -> None:
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(conn.recv(), TIMEOUT)

        # The stalled client reads again only now (uvicorn waits for every socket to close,
        # and a peer that never reads holds it until its keepalive gives up).
        readers = [asyncio.create_task(read_to_the_end(c)) for c in (idle, resumed, stalled)]
        loop = asyncio.get_running_loop()
        started = loop.time()
        await live.stop()
        assert loop.time() - started < 15
        assert manager.connection_count == 0
        await asyncio.gather(*readers)


class Opaque:
    def __str__(self) -> str:
        return "opaque value"


async def test_ids_datetimes_and_paths_inside_data_are_sent_as_strings(
    live: LiveServer,
) -> None:
    services = live.services
    workflow_id = await new_workflow(services)
    ref, when = uuid.uuid4(), datetime(2025, 5, 1, 12, 30, tzinfo=UTC)
    async with open_ws(live) as conn:
        client = Client(conn)
        await client.sync()
        trace = await emit(
            services,
            workflow_id,
            EventType.AGENT_MESSAGE,
            "x",
            ref=ref,
            at=when,
            p=Path("/a"),
            opaque=Opaque(),
        )
        stored = await emit(services, workflow_id, ref=ref, at=when)
        trace_payload, stored_payload = payloads(await client.events_until(stored.id))
    assert trace_payload["data"] == {
        "ref": str(ref),
        "at": "2025-05-01T12:30:00Z",
        "p": "/a",
        "opaque": "opaque value",
    }
    assert trace_payload["id"] == str(trace.id)
    assert stored_payload["data"]["ref"] == str(ref)
    assert datetime.fromisoformat(stored_payload["timestamp"]) == stored.timestamp


async def test_brainstorm_events_use_the_flat_frame(live: LiveServer) -> None:
    session_id, message_id = uuid.uuid4(), uuid.uuid4()
    async with open_ws(live) as conn:
        client = Client(conn)
        await client.sync()
        live.services.bus.emit(
            WorkflowEvent(
                id=uuid.uuid4(),
                domain=EventDomain.BRAINSTORM,
                workflow_id=session_id,
                sequence=0,
                timestamp=datetime(2025, 5, 1, tzinfo=UTC),
                agent="brainstormer",
                event_type=EventType.BRAINSTORM_TEXT,
                message="",
                data={"message_id": message_id, "text": "hello"},
            )
        )
        frame = await client.next()
    assert frame == {
        "type": "brainstorm",
        "event_type": "text",
        "session_id": str(session_id),
        "message_id": str(message_id),
        "data": {"message_id": str(message_id), "text": "hello"},
        "timestamp": "2025-05-01T00:00:00Z",
    }


async def test_the_stream_is_refused_when_the_manager_is_not_installed(
    database_url: str, tmp_path: Path
) -> None:
    app = create_app(api_conftest.test_config(database_url, tmp_path), migrate=True)
    app.state.startup_hooks.clear()  # as if create_app had not installed the manager
    async with LiveServer(app) as server:
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with open_ws(server):
                pass
        assert refused.value.response.status_code == 403
