"""Find the tools a channel may use: Python callables and admin HTTP tools."""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..providers.base import ToolSpec
from .schema import build_validator

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class ToolContext:
    """Who a tool runs for: a Python tool declaring ``context`` receives it."""

    tenant_id: int | None
    agent_id: str
    ref: str


@dataclass(frozen=True)
class Tool:
    """A callable tool: a Python function or an HTTP endpoint (``http``)."""

    name: str
    description: str
    parameters: dict[str, Any]
    timeout: float
    validator: Any
    func: Callable[..., Any] | None = None
    takes_context: bool = False
    http: Any = None  # conversations.models.HttpTool

    @property
    def spec(self) -> ToolSpec:
        """Return what the model is told about this tool."""
        return ToolSpec(self.name, self.description, self.parameters)


_python_tools: dict[str, Tool] = {}
# HTTP tools' validators, keyed by (pk, updated_at) so an admin edit rebuilds
# one and the agent loop does not re-check a schema on every reply.
_http_validators: dict[tuple[int, Any], Any] = {}
_http_lock = threading.Lock()


def tool(
    *,
    description: str,
    parameters: dict[str, Any],
    name: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> Callable[[F], F]:
    """Register the decorated function as a tool the model may call.

    The model's arguments are validated against ``parameters`` (a JSON Schema
    object) and passed as keyword arguments; a keyword-only ``context``
    parameter receives the ToolContext. The return value (str, or anything
    JSON-serialisable) is what the model reads; raise ToolError for an error
    the model should see as such.
    """

    def register(func: F) -> F:
        tool_name = name or func.__name__
        if tool_name in _python_tools and _python_tools[tool_name].func is not func:
            raise ValueError(f"a tool named {tool_name!r} is already registered")
        _python_tools[tool_name] = Tool(
            name=tool_name,
            description=description,
            parameters=parameters,
            timeout=timeout,
            validator=build_validator(parameters),
            func=func,
            takes_context="context" in inspect.signature(func).parameters,
        )
        return func

    return register


def python_tool_names() -> frozenset[str]:
    """Return the names of the tools registered in code."""
    return frozenset(_python_tools)


def _http_tool(row: Any) -> Tool | None:
    key = (row.pk, row.updated_at)
    with _http_lock:
        validator = _http_validators.get(key)
    if validator is None:
        try:
            validator = build_validator(row.parameters)
        except ValueError as exc:
            logger.warning("tool_unusable name=%s reason=%s", row.name, exc)
            return None
        with _http_lock:
            _http_validators[key] = validator
    return Tool(
        name=row.name,
        description=row.description,
        parameters=row.parameters,
        timeout=row.timeout_seconds,
        validator=validator,
        http=row,
    )


def tools_resolve(*, names: list[str]) -> list[Tool]:
    """Return the tools called ``names``, in order; unknown ones are logged.

    A tool registered in code wins over an HTTP tool of the same name (the
    admin refuses such a name).
    """
    wanted = list(dict.fromkeys(n.strip() for n in names if n and n.strip()))
    if not wanted:
        return []
    found = {n: _python_tools[n] for n in wanted if n in _python_tools}
    missing = [n for n in wanted if n not in found]
    if missing:
        from ..models import HttpTool

        for row in HttpTool.objects.filter(name__in=missing, enabled=True):
            http = _http_tool(row)
            if http is not None:
                found[row.name] = http
    unknown = [n for n in wanted if n not in found]
    if unknown:
        logger.warning("tools_unknown names=%s", ",".join(unknown))
    return [found[n] for n in wanted if n in found]
