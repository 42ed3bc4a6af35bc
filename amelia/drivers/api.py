"""The `api` driver: the OpenAI-compatible chat-completions protocol over httpx.

Any provider or local server that speaks `POST {base_url}/chat/completions` works (OpenRouter by
default, or vLLM, llama.cpp, Ollama, LiteLLM...). Profile options (all optional):

- `base_url`: the API root; default `AMELIA_API_BASE_URL`, else `https://openrouter.ai/api/v1`.
- `api_key_env`: name of the environment variable holding the bearer key; default
  `OPENROUTER_API_KEY`. The key is required unless the base URL is loopback.
- `connect_timeout` (10 s), `read_timeout` (300 s): seconds; the read timeout bounds the wait
  for the whole reply, since we do not stream.
- `max_retries` (3), `retry_base_delay` (1 s), `retry_max_delay` (30 s): transient failures
  (connect errors, timeouts, dropped connections, 429, 500/502/503/504) are retried with
  exponential backoff and jitter; a 429's `Retry-After` is honoured, and one longer than
  `retry_max_delay` ends the retries at once (the caller's own retry policy decides).
- `max_tokens`, `temperature`: defaults for requests that do not set them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import random
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from amelia.drivers.base import (
    AgentReply,
    AgentRequest,
    DriverConfigError,
    DriverResponseError,
    DriverTransientError,
    check_known_options,
    excerpt,
    option_int,
    option_number,
    option_positive,
    option_str,
)

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://openrouter.ai/api/v1"
BASE_URL_ENV = "AMELIA_API_BASE_URL"
DEFAULT_API_KEY_ENV = "OPENROUTER_API_KEY"
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})

OPTIONS = (
    "base_url",
    "api_key_env",
    "connect_timeout",
    "read_timeout",
    "max_retries",
    "retry_base_delay",
    "retry_max_delay",
    "max_tokens",
    "temperature",
)


def is_loopback(url: str) -> bool:
    """True when `url` points at this machine (where a local server needs no key)."""
    try:
        host = httpx.URL(url).host
    except httpx.InvalidURL:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(base_url: str) -> httpx.URL:
    """Parse the API root, refusing anything but an http(s) URL with a host.

    Raises:
        DriverConfigError: naming the option and the variable that set it.
    """
    try:
        url = httpx.URL(base_url)
    except httpx.InvalidURL:
        url = httpx.URL()
    if url.scheme not in ("http", "https") or not url.host:
        raise DriverConfigError(
            f"agent option 'base_url' (or {BASE_URL_ENV}) must be an http(s) URL, got {base_url!r}"
        )
    return url


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP-date), else None."""
    if not value:
        return None
    try:
        seconds = float(value)  # decimals are accepted too: some proxies send them
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(seconds, 0.0) if seconds == seconds else None  # NaN check


class ApiDriver:
    """An `AgentDriver` for OpenAI-compatible chat-completions endpoints.

    One `httpx.AsyncClient` is shared by every call of the driver (connection reuse); close it
    with `aclose()` or use the driver as an async context manager.
    """

    def __init__(
        self,
        *,
        model: str,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 300.0,
        max_retries: int = 3,
        retry_base_delay: float = 1.0,
        retry_max_delay: float = 30.0,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> None:
        """Build the driver; prefer `from_options` for profile configuration.

        Args:
            model: Default model id sent as `model` (a request may override it).
            base_url: The API root; `/chat/completions` is appended.
            api_key: Bearer key; None sends no Authorization header.
            connect_timeout: Seconds to establish a connection.
            read_timeout: Seconds to wait for the reply.
            max_retries: Retries after the first attempt for transient failures.
            retry_base_delay: First backoff delay in seconds (doubles each retry).
            retry_max_delay: Cap on one backoff delay, and on an honoured Retry-After.
            max_tokens: Default `max_tokens` for requests that set none.
            temperature: Default `temperature` for requests that set none.

        Raises:
            DriverConfigError: the base URL is not an http(s) URL with a host.
        """
        url = check_base_url(base_url)
        if not model.strip():
            raise DriverConfigError("the agent's 'model' must not be empty")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self._endpoint = f"{self.base_url}/chat/completions"
        self._max_retries = max_retries
        self._base_delay = retry_base_delay
        self._max_delay = retry_max_delay
        self._max_tokens = max_tokens
        self._temperature = temperature
        if api_key and url.scheme == "http" and not is_loopback(base_url):
            logger.warning("sending an API key over plain http to %s", url.host)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(
                connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
            ),
        )

    @classmethod
    def from_options(
        cls, model: str, options: Mapping[str, object], environ: Mapping[str, str] | None = None
    ) -> ApiDriver:
        """Build the driver from a profile agent's `model` and `options`.

        Args:
            model: The agent's configured model.
            options: The agent's options (see the module docstring).
            environ: Environment to read the key and base URL from (default `os.environ`).

        Raises:
            DriverConfigError: an option is invalid, or the key variable is unset for a
                non-loopback base URL (the message names the variable).
        """
        env = os.environ if environ is None else environ
        check_known_options("api", options, OPTIONS)
        base_url = (
            option_str(options, "base_url", None) or env.get(BASE_URL_ENV) or DEFAULT_BASE_URL
        )
        check_base_url(base_url)
        key_env = option_str(options, "api_key_env", DEFAULT_API_KEY_ENV) or DEFAULT_API_KEY_ENV
        api_key = env.get(key_env, "").strip() or None
        if api_key is None and not is_loopback(base_url):
            raise DriverConfigError(
                f"no API key for {base_url}: set the environment variable {key_env}, or name "
                "another variable with the agent option 'api_key_env'"
            )
        temperature = option_number(options, "temperature")
        if temperature is not None and not 0.0 <= temperature <= 2.0:
            raise DriverConfigError(
                f"agent option 'temperature' must be in 0..2, got {temperature:g}"
            )
        return cls(
            model=model,
            base_url=base_url,
            api_key=api_key,
            connect_timeout=option_positive(options, "connect_timeout", 10.0),
            read_timeout=option_positive(options, "read_timeout", 300.0),
            max_retries=option_int(options, "max_retries", 3) or 0,
            retry_base_delay=option_positive(options, "retry_base_delay", 1.0),
            retry_max_delay=option_positive(options, "retry_max_delay", 30.0),
            max_tokens=option_int(options, "max_tokens", None, minimum=1),
            temperature=temperature,
        )

    async def __aenter__(self) -> ApiDriver:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the shared HTTP client."""
        await self._client.aclose()

    async def run(self, request: AgentRequest) -> AgentReply:
        """POST the request to `{base_url}/chat/completions`, retrying transient failures.

        Raises:
            DriverTransientError: still failing transiently after `max_retries` retries, or the
                provider asked for a Retry-After longer than `retry_max_delay`.
            DriverResponseError: a non-retryable status (4xx other than 429), or a 2xx body that
                is not JSON or lacks `choices[0].message.content`.
        """
        payload = self._payload(request)
        started = time.monotonic()
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                response = await self._client.post(self._endpoint, json=payload)
            except httpx.TimeoutException as exc:
                failure = f"{type(exc).__name__} (timed out) calling {self._endpoint}"
            except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                failure = f"{type(exc).__name__} calling {self._endpoint}: {exc}"
            else:
                status = response.status_code
                if status in RETRYABLE_STATUSES:
                    retry_after = parse_retry_after(response.headers.get("retry-after"))
                    failure = f"HTTP {status} from {self._endpoint}: {excerpt(response.text)}"
                elif not response.is_success:
                    raise DriverResponseError(
                        self._status_message(status, response.text),
                        status=status,
                        excerpt=excerpt(response.text),
                    )
                else:
                    body = self._decode(response)
                    error_code = _embedded_error_code(body)
                    if error_code is None:
                        return self._reply(body, payload, started)
                    # Some providers answer 200 with an error object (e.g. an upstream 502).
                    if error_code not in RETRYABLE_STATUSES:
                        raise DriverResponseError(
                            f"{self._endpoint} answered 200 with error {error_code}: "
                            f"{excerpt(response.text)}",
                            status=error_code,
                            excerpt=excerpt(response.text),
                        )
                    failure = f"error {error_code} in a 200 reply: {excerpt(response.text)}"
            attempt += 1
            delay = self._next_delay(attempt, failure, retry_after)
            logger.warning(
                "agent call failed (attempt %d of %d), retrying in %.2fs: %s",
                attempt, self._max_retries + 1, delay, failure,
            )  # fmt: skip
            await asyncio.sleep(delay)

    def _next_delay(self, attempt: int, failure: str, retry_after: float | None) -> float:
        """The backoff before retry number `attempt`, or raise when retrying must stop."""
        if attempt > self._max_retries:
            raise DriverTransientError(
                f"gave up after {attempt} attempt(s): {failure}",
                retry_after=retry_after,
                attempts=attempt,
            )
        if retry_after is not None:
            if retry_after > self._max_delay:
                raise DriverTransientError(
                    f"provider asked to retry after {retry_after:.0f}s (more than "
                    f"retry_max_delay={self._max_delay:g}s): {failure}",
                    retry_after=retry_after,
                    attempts=attempt,
                )
            return retry_after
        # Exponential backoff with "equal jitter": at least half the step, so that retries
        # never hammer the server, and spread so that parallel workflows do not synchronise.
        step = min(self._max_delay, self._base_delay * 2.0 ** (attempt - 1))
        return step / 2 + random.uniform(0, step / 2)

    def _payload(self, request: AgentRequest) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": request.model or self.model,
            "messages": request.chat_messages(),
        }
        max_tokens = request.max_tokens if request.max_tokens is not None else self._max_tokens
        if max_tokens is not None:
            payload["max_tokens"] = max_tokens
        temperature = request.temperature if request.temperature is not None else self._temperature
        if temperature is not None:
            payload["temperature"] = temperature
        return payload

    def _status_message(self, status: int, text: str) -> str:
        hint = ""
        if status in (401, 403):
            hint = " (check the API key and the agent option 'api_key_env')"
        elif status == 404:
            hint = " (check the agent option 'base_url' and the model name)"
        return f"HTTP {status} from {self._endpoint}{hint}: {excerpt(text)}"

    def _decode(self, response: httpx.Response) -> dict[str, Any]:
        body: object = None
        with contextlib.suppress(ValueError):  # JSONDecodeError and UnicodeDecodeError alike
            body = response.json()
        if not isinstance(body, dict):
            raise DriverResponseError(
                f"HTTP {response.status_code} from {self._endpoint} is not a JSON object: "
                f"{excerpt(response.text)}",
                status=response.status_code,
                excerpt=excerpt(response.text),
            )
        return body

    def _reply(self, body: dict[str, Any], payload: dict[str, Any], started: float) -> AgentReply:
        def bad(what: str) -> DriverResponseError:
            text = excerpt(json.dumps(body))
            return DriverResponseError(
                f"reply from {self._endpoint} {what}: {text}", status=200, excerpt=text
            )

        choices = body.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise bad("has no choices[0]")
        message = choices[0].get("message")
        if not isinstance(message, dict):
            raise bad("has no choices[0].message")
        text = _content_text(message.get("content"))
        finish = choices[0].get("finish_reason")
        finish_reason = finish if isinstance(finish, str) else None
        if text is None:
            raise bad("has no text in choices[0].message.content")
        if not text.strip():
            raise bad(f"has empty content (finish_reason={finish_reason})")
        usage = _mapping(body.get("usage"))
        details = _mapping(usage.get("prompt_tokens_details"))
        model = body.get("model")
        return AgentReply(
            text=text,
            model=model if isinstance(model, str) and model else payload["model"],
            input_tokens=_count(usage.get("prompt_tokens")),
            output_tokens=_count(usage.get("completion_tokens")),
            cache_read_tokens=_count(details.get("cached_tokens")),
            cache_creation_tokens=_count(details.get("cache_write_tokens")),
            cost_usd=_cost(usage.get("cost")),
            duration_ms=round((time.monotonic() - started) * 1000),
            num_turns=1,
            finish_reason=finish_reason,
        )


def _embedded_error_code(body: dict[str, Any]) -> int | None:
    """The status of an `error` object in a 2xx body without choices, else None."""
    error = body.get("error")
    if error is None or body.get("choices"):
        return None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) else 502


def _mapping(value: object) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one (usage blocks are optional)."""
    return value if isinstance(value, dict) else {}


def _content_text(content: object) -> str | None:
    """Message content as text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]
        return "".join(parts) if parts else None
    return None


def _count(value: object) -> int:
    """A token count; absent or malformed usage counts as 0 (the text is still usable)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if value is not None:
        logger.warning("ignoring malformed token count %r in an agent reply", value)
    return 0


def _cost(value: object) -> Decimal | None:
    """The reported cost as an exact Decimal (via its decimal text), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        cost = Decimal(str(value))
    except InvalidOperation:
        return None
    return cost if cost.is_finite() and cost >= 0 else None
