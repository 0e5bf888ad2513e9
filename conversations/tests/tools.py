"""Python tools registered for the tests (imported by the tool and agent tests)."""

from __future__ import annotations

import time
from typing import Any

from conversations.tools import ToolContext, tool

#: Arguments of every call that reached a tool's body, in order.
ran: list[dict[str, Any]] = []


@tool(
    name="test_add",
    description="Add two integers.",
    parameters={
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
        "additionalProperties": False,
    },
)
def add(*, a: int, b: int) -> dict[str, int]:
    ran.append({"a": a, "b": b})
    return {"sum": a + b}


@tool(
    name="test_boom",
    description="Always fails.",
    parameters={"type": "object", "properties": {}},
)
def boom() -> str:
    ran.append({})
    raise ConnectionError("inventory service unreachable")


@tool(
    name="test_slow",
    description="Answers after its timeout.",
    parameters={"type": "object", "properties": {}},
    timeout=0.3,
)
def slow() -> str:
    ran.append({})
    time.sleep(4)
    return "too late"


@tool(
    name="test_whoami",
    description="Return who the tool runs for.",
    parameters={"type": "object", "properties": {}},
)
def whoami(*, context: ToolContext) -> dict[str, Any]:
    return {"tenant_id": context.tenant_id, "ref": context.ref}
