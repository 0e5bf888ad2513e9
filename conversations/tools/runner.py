"""Run one tool call: validate the arguments, call with a time limit, report.

Nothing a tool does fails the reply: invalid arguments, an exception, an HTTP
error or a timeout all become an error result the model reads and can act on.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import httpx
from django.db import connections

from .registry import Tool, ToolContext
from .schema import arguments_problem

logger = logging.getLogger(__name__)

# What a model is shown of one result; a page of text is plenty to answer from
# and keeps a chatty endpoint from filling the context window.
MAX_RESULT_CHARS = 8000
# Tools run on a shared pool so a call can be abandoned at its timeout (a
# thread cannot be killed). A tool that never returns keeps one worker busy;
# the bound keeps a pile of them from growing threads without end, and later
# calls then time out in the queue, still as error results.
POOL_SIZE = 32

_pool: ThreadPoolExecutor | None = None
_client: httpx.Client | None = None
_lock = threading.Lock()


class ToolError(Exception):
    """Report a failure the model should read as the tool's error result."""


@dataclass(frozen=True)
class ToolResult:
    """What the model is told, whether the call succeeded, and how long it took."""

    content: str
    ok: bool
    latency_ms: int
    error: str = ""


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(POOL_SIZE, thread_name_prefix="tool")
        return _pool


def _http_client() -> httpx.Client:
    global _client
    with _lock:
        if _client is None:
            # One client, shared by the pool threads: keep-alive to the tools'
            # hosts. Redirects are not followed: an endpoint is configured as
            # the URL it really lives at.
            _client = httpx.Client(follow_redirects=False)
        return _client


def _call_http(tool: Tool, arguments: dict[str, Any], timeout: float) -> Any:
    row = tool.http
    headers = {"Accept": "application/json"}
    if row.auth_header and row.auth_secret:
        headers[row.auth_header] = row.auth_secret
    query = row.method == "GET"
    try:
        response = _http_client().request(
            row.method,
            row.url,
            params=arguments if query else None,
            json=None if query else arguments,
            headers=headers,
            timeout=httpx.Timeout(timeout),
        )
    except httpx.TimeoutException as exc:
        raise ToolError(f"timed out after {timeout:g}s") from exc
    except httpx.HTTPError as exc:
        raise ToolError(f"request failed: {type(exc).__name__}") from exc
    if response.status_code >= 400:
        raise ToolError(f"HTTP {response.status_code}: {response.text[:300]}")
    if "json" in response.headers.get("content-type", ""):
        try:
            return response.json()
        except ValueError:
            pass
    return response.text


def _call(tool: Tool, arguments: dict[str, Any], context: ToolContext) -> Any:
    """Run in a pool thread, which no request or task cycle ever cleans up."""
    try:
        if tool.http is not None:
            return _call_http(tool, arguments, tool.timeout)
        assert tool.func is not None
        if tool.takes_context:
            return tool.func(**arguments, context=context)
        return tool.func(**arguments)
    finally:
        # A tool that queried the database opened a connection of this
        # thread; keeping one per pool thread would pin up to POOL_SIZE
        # server connections per worker process.
        connections.close_all()


def _content(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + "…[truncated]"
    return text


def _failed(error: str, started: float) -> ToolResult:
    return ToolResult(
        content=json.dumps({"error": error}),
        ok=False,
        latency_ms=int((time.monotonic() - started) * 1000),
        error=error,
    )


def tool_invoke(
    *,
    tool: Tool,
    arguments: Any,
    context: ToolContext,
    deadline: float | None = None,
) -> ToolResult:
    """Run ``tool`` with the model's ``arguments`` and return its result.

    The arguments are validated first (an invalid call never reaches the
    tool); the call is bounded by the tool's timeout, cut to ``deadline``
    (a ``time.monotonic()`` value) when given.
    """
    started = time.monotonic()
    problem = arguments_problem(tool.validator, arguments)
    if problem:
        return _failed(f"invalid arguments: {problem}", started)
    timeout = tool.timeout
    if deadline is not None:
        timeout = min(timeout, deadline - started)
        if timeout <= 0:
            return _failed("no time left for this call", started)
    future = _executor().submit(_call, tool, arguments, context)
    try:
        value = future.result(timeout=timeout)
    except FutureTimeout:
        future.cancel()  # still queued: never starts; running: result ignored
        return _failed(f"timed out after {timeout:g}s", started)
    except ToolError as exc:
        return _failed(str(exc), started)
    except Exception as exc:
        logger.warning(
            "tool_raised name=%s ref=%s error=%s",
            tool.name,
            context.ref,
            type(exc).__name__,
            exc_info=True,
        )
        return _failed(f"{type(exc).__name__}: {exc}"[:500], started)
    try:
        content = _content(value)
    except (TypeError, ValueError) as exc:
        return _failed(f"result is not JSON: {exc}", started)
    return ToolResult(
        content=content, ok=True, latency_ms=int((time.monotonic() - started) * 1000)
    )
