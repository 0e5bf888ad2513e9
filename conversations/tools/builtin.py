"""Tools every channel may enable: the current time, the tenant's FAQ."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .knowledge import knowledge_search
from .registry import ToolContext, tool
from .runner import ToolError


@tool(
    name="current_time",
    description=(
        "Return the current date and time in a timezone. Use it for questions "
        "about today's date, the time, or opening hours in a city."
    ),
    parameters={
        "type": "object",
        "properties": {
            "timezone": {
                "type": "string",
                "description": "IANA timezone name, e.g. Europe/Paris, Asia/Kolkata",
                "minLength": 1,
                "maxLength": 64,
            }
        },
        "required": ["timezone"],
        "additionalProperties": False,
    },
    timeout=2.0,
)
def current_time(*, timezone: str) -> dict[str, Any]:
    """Return the date, time, weekday and UTC offset now in ``timezone``."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ToolError(
            f"unknown timezone {timezone!r}; use an IANA name like Europe/London"
        ) from exc
    now = datetime.now(UTC).astimezone(zone)
    return {
        "timezone": timezone,
        "datetime": now.isoformat(timespec="seconds"),
        "weekday": now.strftime("%A"),
        "utc_offset": now.strftime("%z"),
    }


@tool(
    name="faq_lookup",
    description=(
        "Search this business's FAQ for the customer's question and return the "
        "best matching questions with their answers. Answer from these; if none "
        "fits, say you do not know."
    ),
    parameters={
        "type": "object",
        "properties": {
            "query": {
                "type": "string",
                "description": "The question or its key words",
                "minLength": 1,
                "maxLength": 300,
            }
        },
        "required": ["query"],
        "additionalProperties": False,
    },
    timeout=5.0,
)
def faq_lookup(*, query: str, context: ToolContext) -> dict[str, Any]:
    """Return the calling tenant's FAQ entries that best match ``query``."""
    if context.tenant_id is None:
        raise ToolError("no FAQ: this conversation has no tenant")
    matches = knowledge_search(tenant_id=context.tenant_id, query=query)
    return {
        "matches": [{"question": m["question"], "answer": m["answer"]} for m in matches]
    }
