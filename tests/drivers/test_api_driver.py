"""ApiDriver against a real local chat-completions server: shape, parsing, retries, errors."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest

from amelia.drivers import (
    AgentRequest,
    ApiDriver,
    ChatMessage,
    DriverConfigError,
    DriverResponseError,
    DriverTransientError,
    build_driver,
)
from amelia.drivers.api import DEFAULT_BASE_URL, parse_retry_after
from tests.drivers.chat_server import ChatServer, completion


@dataclass(frozen=True)
class Agent:
    """Stands in for the profile's AgentConfig (same attribute names)."""

    driver: str
    model: str
    options: dict[str, Any] = field(default_factory=dict)


FAST = {"retry_base_delay": 0.001, "retry_max_delay": 1.0, "connect_timeout": 1.0}


@pytest.fixture
async def make_driver(
    chat_server: ChatServer,
) -> AsyncIterator[Callable[..., ApiDriver]]:
    """Build ApiDrivers pointed at the test server with fast retries; closes them afterwards."""
    built: list[ApiDriver] = []

    def make(**options: Any) -> ApiDriver:
        merged = {"base_url": chat_server.url, **FAST, **options}
        driver = ApiDriver.from_options("test/model", merged, environ={})
        built.append(driver)
        return driver

    yield make
    for driver in built:
        await driver.aclose()


def request(prompt: str = "hello") -> AgentRequest:
    return AgentRequest(prompt=prompt, system="be brief")


async def test_request_shape_and_parsed_reply(
    chat_server: ChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AMELIA_TEST_PROVIDER_KEY", "sk-test-123")
    usage = {
        "prompt_tokens": 1200,
        "completion_tokens": 345,
        "prompt_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 150},
        "cost": 0.001234,
    }
    chat_server.ok("the plan", model="provider/model-2025", usage=usage, finish_reason="length")
    config = Agent(
        "api",
        "provider/model",
        {"base_url": chat_server.url, "api_key_env": "AMELIA_TEST_PROVIDER_KEY"},
    )
    driver = build_driver(config)
    assert isinstance(driver, ApiDriver)
    try:
        reply = await driver.run(
            AgentRequest(
                prompt="write the plan",
                system="you are the architect",
                history=(ChatMessage("user", "hi"), ChatMessage("assistant", "hello")),
                max_tokens=500,
                temperature=0.2,
            )
        )
    finally:
        await driver.aclose()

    [sent] = chat_server.requests
    assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
    assert sent.headers["authorization"] == "Bearer sk-test-123"
    assert sent.headers["content-type"] == "application/json"
    assert sent.body == {
        "model": "provider/model",
        "messages": [
            {"role": "system", "content": "you are the architect"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "write the plan"},
        ],
        "max_tokens": 500,
        "temperature": 0.2,
    }
    assert reply.text == "the plan"
    assert reply.model == "provider/model-2025"  # the model that answered, not the alias sent
    assert (reply.input_tokens, reply.output_tokens) == (1200, 345)
    assert (reply.cache_read_tokens, reply.cache_creation_tokens) == (1000, 150)
    assert reply.cost_usd == Decimal("0.001234")
    assert reply.finish_reason == "length"
    assert reply.num_turns == 1
    assert reply.duration_ms >= 0


async def test_request_model_and_option_defaults(
    chat_server: ChatServer, make_driver: Callable[..., ApiDriver]
) -> None:
    driver = make_driver(max_tokens=64, temperature=0)
    await driver.run(AgentRequest(prompt="a", model="other/model"))
    await driver.run(AgentRequest(prompt="b", max_tokens=8, temperature=1.5))
    first, second = (r.body for r in chat_server.requests)
    assert first["model"] == "other/model"
    assert first["messages"] == [{"role": "user", "content": "a"}]  # no empty system message
    assert (first["max_tokens"], first["temperature"]) == (64, 0)
    assert second["model"] == "test/model"
    assert (second["max_tokens"], second["temperature"]) == (8, 1.5)


async def test_missing_usage_counts_zero_and_no_cost(
    chat_server: ChatServer, make_driver: Callable[..., ApiDriver]
) -> None:
    body = completion("ok")
    del body["model"]
    chat_server.respond_json(200, body)
    chat_server.respond_json(
        200, {"choices": [{"message": {"content": [{"type": "text", "text": "a"}, {"text": "b"}]}}]}
    )
    driver = make_driver()
    reply = await driver.run(request())
    assert (reply.input_tokens, reply.output_tokens, reply.cache_read_tokens) == (0, 0, 0)
    assert reply.cost_usd is None
    assert reply.model == "test/model"  # falls back to the model we asked for
    assert (await driver.run(request())).text == "ab"  # content given as parts


async def test_loopback_needs_no_key(chat_server: ChatServer) -> None:
    driver = ApiDriver.from_options("m", {"base_url": chat_server.url}, environ={})
    try:
        reply = await driver.run(request("ping"))
    finally:
        await driver.aclose()
    assert reply.text == "echo: ping"
    assert "authorization" not in chat_server.requests[0].headers


async def test_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    monkeypatch.delenv("AMELIA_API_BASE_URL", raising=False)
    with pytest.raises(DriverConfigError, match="OPENROUTER_API_KEY"):
        build_driver(Agent("api", "m"))
    with pytest.raises(DriverConfigError, match="MY_PROVIDER_KEY"):
        ApiDriver.from_options(
            "m",
            {"base_url": "https://llm.example.test/v1", "api_key_env": "MY_PROVIDER_KEY"},
            environ={"MY_PROVIDER_KEY": "  "},  # blank counts as missing
        )


async def test_base_url_from_option_env_or_default() -> None:
    env = {"OPENROUTER_API_KEY": "k", "AMELIA_API_BASE_URL": "https://env.example.test/api/"}
    drivers = [
        ApiDriver.from_options("m", {}, environ={"OPENROUTER_API_KEY": "k"}),
        ApiDriver.from_options("m", {}, environ=env),
        ApiDriver.from_options("m", {"base_url": "https://opt.example.test/v1"}, environ=env),
    ]
    try:
        urls = [d.base_url for d in drivers]
    finally:
        for d in drivers:
            await d.aclose()
    assert urls == [DEFAULT_BASE_URL, "https://env.example.test/api", "https://opt.example.test/v1"]


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"base_url": "ftp://x.test"}, "base_url"),
        ({"read_timout": 5}, "read_timout"),
        ({"read_timeout": "5"}, "read_timeout"),
        ({"connect_timeout": 0}, "connect_timeout"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": True}, "max_retries"),
        ({"temperature": 3}, "temperature"),
        ({"api_key_env": ""}, "api_key_env"),
    ],
)
async def test_invalid_options_are_config_errors(options: dict[str, Any], named: str) -> None:
    with pytest.raises(DriverConfigError, match=named):
        ApiDriver.from_options("m", {"base_url": "http://127.0.0.1:9/v1", **options}, environ={})


async def test_503_twice_then_success(
    chat_server: ChatServer, make_driver: Callable[..., ApiDriver]
) -> None:
    chat_server.respond_json(503, {"error": {"message": "overloaded"}})
    chat_server.respond_json(503, {"error": {"message": "overloaded"}})
    chat_server.ok("finally", usage={"prompt_tokens": 3, "completion_tokens": 1})
    reply = await make_driver(max_retries=3).run(request())
    assert reply.text == "finally"
    assert reply.input_tokens == 3
    assert len(chat_server.requests) == 3
    assert chat_server.requests[0].body == chat_server.requests[2].body  # same request resent


async def test_429_honours_retry_after(
    chat_server: ChatServer, make_driver: Callable[..., ApiDriver]
) -> None:
    chat_server.respond_json(429, {"error": "slow down"}, headers={"Retry-After": "0.4"})
    chat_server.ok("ok")
    started = time.monotonic()
    reply = await make_driver(max_retries=1).run(request())
    assert reply.text == "ok"
    assert time.monotonic() - started >= 0.4  # backoff alone would be ~1 ms
    assert reply.duration_ms >= 400  # duration covers the whole call, retries included
    assert len(chat_server.requests) == 2


async def test_retry_after_beyond_max_delay_stops_retrying(
    chat_server: ChatServer, make_driver: Callable[..., ApiDriver]
) -> None:
    chat_server.respond_json(429, {"error": "quota"}, headers={"Retry-After": "120"})
    with pytest.raises(DriverTransientError) as caught:
        await make_driver(max_retries=5).run(request())
    assert caught.value.retry_after == 120
    assert caught.value.attempts == 1
    assert len(chat_server.requests) == 1


async def test_retries_exhausted_is_transient_error(
    chat_server: ChatServer, make_driver: Callable[..., ApiDriver]
) -> None:
    for status in (500, 502, 504):
        chat_server.respond_json(status, {"error": f"upstream {status}"})
    with pytest.raises(DriverTransientError, match="504") as caught:
        await make_driver(max_retries=2).run(request())
    assert caught.value.attempts == 3
    assert len(chat_server.requests) == 3


async def test_backoff_grows_exponentially_with_jitter(
    chat_server: ChatServer, make_driver: Callable[..., ApiDriver]
) -> None:
    for _ in range(3):
        chat_server.respond_json(500, {"error": "boom"})
    started = time.monotonic()
    with pytest.raises(DriverTransientError):
        await make_driver(max_retries=2, retry_base_delay=0.1).run(request())
    elapsed = time.monotonic() - started
    # Steps of 0.1 s then 0.2 s, each jittered into [step/2, step]: 0.15 s to 0.3 s of sleep.
    assert 0.15 <= elapsed < 1.0


async def test_client_errors_are_not_retried(
    chat_server: ChatServer, make_driver: Callable[..., ApiDriver]
) -> None:
    chat_server.respond_json(400, {"error": {"message": "context length exceeded"}})
    chat_server.respond_json(401, {"error": {"message": "bad key"}})
    driver = make_driver(max_retries=3)
    with pytest.raises(DriverResponseError, match="context length exceeded") as caught:
        await driver.run(request())
    assert caught.value.status == 400
    assert "400" in str(caught.value)
    assert len(chat_server.requests) == 1
    with pytest.raises(DriverResponseError, match="api_key_env") as caught:
        await driver.run(request())
    assert caught.value.status == 401
    assert len(chat_server.requests) == 2


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"choices": [', "not a JSON object"),
        (b"[1, 2]", "not a JSON object"),
        (b"\xff\xfe garbage", "not a JSON object"),
        (b'{"id": "x"}', "no choices"),
        (b'{"choices": [{"message": {"role": "assistant", "content": null}}]}', "no text"),
        (b'{"choices": [{"message": {"content": "  "}, "finish_reason": "length"}]}', "empty"),
    ],
)
async def test_unusable_2xx_body_is_response_error(
    chat_server: ChatServer, make_driver: Callable[..., ApiDriver], raw: bytes, reason: str
) -> None:
    chat_server.respond_raw(200, raw)
    with pytest.raises(DriverResponseError, match=reason) as caught:
        await make_driver(max_retries=3).run(request())
    assert caught.value.status == 200
    assert caught.value.excerpt  # the message shows what came back
    assert len(chat_server.requests) == 1


async def test_error_object_inside_200(
    chat_server: ChatServer, make_driver: Callable[..., ApiDriver]
) -> None:
    chat_server.respond_json(200, {"error": {"code": 502, "message": "provider down"}})
    chat_server.ok("recovered")
    chat_server.respond_json(200, {"error": {"code": 400, "message": "bad request"}})
    driver = make_driver(max_retries=2)
    assert (await driver.run(request())).text == "recovered"
    with pytest.raises(DriverResponseError, match="bad request"):
        await driver.run(request())
    assert len(chat_server.requests) == 3


async def test_read_timeout_retries_then_gives_up(
    chat_server: ChatServer, make_driver: Callable[..., ApiDriver]
) -> None:
    chat_server.stall(3).stall(3)
    started = time.monotonic()
    with pytest.raises(DriverTransientError, match="timed out") as caught:
        await make_driver(read_timeout=0.2, max_retries=1).run(request())
    assert time.monotonic() - started < 2  # gave up on timeouts, did not wait for the server
    assert caught.value.attempts == 2
    assert len(chat_server.requests) == 2


async def test_stall_or_dropped_connection_then_success(
    chat_server: ChatServer, make_driver: Callable[..., ApiDriver]
) -> None:
    chat_server.stall(3).drop().ok("after trouble")
    reply = await make_driver(read_timeout=0.2, max_retries=2).run(request())
    assert reply.text == "after trouble"
    assert len(chat_server.requests) == 3


async def test_connection_refused_is_transient() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = {**FAST, "base_url": f"http://127.0.0.1:{port}/v1", "max_retries": 2}
    async with ApiDriver.from_options("m", options, environ={}) as driver:
        with pytest.raises(DriverTransientError, match="ConnectError") as caught:
            await driver.run(request())
    assert caught.value.attempts == 3


async def test_concurrent_calls_share_one_client(
    chat_server: ChatServer, make_driver: Callable[..., ApiDriver]
) -> None:
    driver = make_driver()
    replies = await asyncio.gather(*(driver.run(request(f"n{i}")) for i in range(8)))
    assert sorted(r.text for r in replies) == sorted(f"echo: n{i}" for i in range(8))
    assert len(chat_server.requests) == 8


async def test_closed_driver_refuses_calls(make_driver: Callable[..., ApiDriver]) -> None:
    driver = make_driver()
    await driver.aclose()
    with pytest.raises(RuntimeError):
        await driver.run(request())


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3
    assert parse_retry_after("-5") == 0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0  # a date in the past
    in_future = parse_retry_after(
        time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))
    )
    assert in_future is not None and 55 < in_future <= 60
