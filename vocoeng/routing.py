"""Route a bus message by its kind to the function that validates it.

``settings.BUS_ROUTES`` maps a kind (``chat_message``, ``pipeline_job``,
``voc_event``) to a dotted path ``f(*, data, attributes) -> Signature | None``.
The function validates the message, records what it must (idempotently) and
returns the Celery signature to enqueue, or None when there is nothing to do
(a duplicate). It raises :class:`PermanentMessageError` for a message that can
never succeed, which the caller dead-letters with the reason.
"""

from __future__ import annotations

import json
import math
import re
from functools import cache
from typing import Any, Protocol

import orjson
from celery.canvas import Signature
from django.conf import settings
from django.utils.module_loading import import_string


class PermanentMessageError(Exception):
    """Reject a message that can never succeed (bad JSON, failed validation)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Route(Protocol):
    def __call__(
        self, *, data: Any, attributes: dict[str, str]
    ) -> Signature | None: ...


@cache
def _resolve(path: str) -> Route:
    return import_string(path)


def route_for(kind: str) -> Route:
    """Return the route function of ``kind``; unknown kinds are permanent errors."""
    path = settings.BUS_ROUTES.get(kind)
    if not path:
        raise PermanentMessageError(f"unknown message kind {kind!r}")
    return _resolve(path)


class _NotJSONNumber(ValueError):
    """A number Python's json reads but JSON (and PostgreSQL's jsonb) does not."""


def _json_constant(name: str) -> Any:
    raise _NotJSONNumber(f"{name} is not a JSON number")


def _json_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e999: Python reads infinity
        raise _NotJSONNumber("a number too large")
    return value


# 19 digits in a row: maybe an integer beyond 64 bits, which orjson reads as
# a float (losing digits) where Python's json keeps it exact.
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def decode_json(raw: bytes | str) -> Any:
    """Decode a message body as UTF-8 JSON or raise a permanent error saying why.

    NUL characters (``\\u0000``) in strings become U+FFFD: PostgreSQL can
    store them in neither text nor jsonb, so one would fail every retry. For
    the same reason NaN, Infinity and numbers too large for a float (which
    Python's json reads as infinity) are refused here, with the reason.

    orjson reads a body first (the bridge decodes every message; ~3 times
    faster than the json module); a body it refuses, or one with a long
    run of digits, is read by the json module, whose result and reasons
    stand: the same values either way.
    """
    raw_bytes = raw if isinstance(raw, bytes) else None
    if raw_bytes is not None and _LONG_DIGITS.search(raw_bytes) is None:
        try:
            data = orjson.loads(raw_bytes)
        except orjson.JSONDecodeError:
            pass
        else:
            if b"\\u0000" in raw_bytes:
                data = nul_replace(data)
            return data
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        data = json.loads(text, parse_constant=_json_constant, parse_float=_json_float)
    except UnicodeDecodeError as exc:
        raise PermanentMessageError(f"body is not UTF-8: {exc.reason}") from exc
    except _NotJSONNumber as exc:
        raise PermanentMessageError(f"body is not JSON: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise PermanentMessageError(f"body is not JSON: {exc.msg}") from exc
    except RecursionError as exc:  # json recurses per nesting level
        raise PermanentMessageError("body is not JSON: nested too deeply") from exc
    except ValueError as exc:  # an integer over Python's 4,300 digits
        raise PermanentMessageError("body is not JSON: a number too long") from exc
    if "\\u0000" in text:
        data = nul_replace(data)
    return data


def nul_replace(data: Any) -> Any:
    """Return ``data`` with NUL in every string (keys too) replaced by U+FFFD."""

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("\x00", "\ufffd")
        return value

    data = clean(data)
    # Iterative: a document nested to just under json's limit must not
    # overflow the stack here.
    stack: list[Any] = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            for i, value in enumerate(node):
                node[i] = clean(value)
                stack.append(node[i])
        elif isinstance(node, dict):
            items = [(clean(k), clean(v)) for k, v in node.items()]
            node.clear()
            node.update(items)
            stack.extend(v for _, v in items)
    return data


def route_message(
    *, kind: str, data: Any, attributes: dict[str, str] | None = None
) -> Signature | None:
    """Validate one message through its route and return what to enqueue."""
    return route_for(kind)(data=data, attributes=dict(attributes or {}))


def route_messages(
    *, kind: str, items: list[tuple[Any, dict[str, str]]]
) -> list[Signature | PermanentMessageError | None]:
    """Validate many messages of one kind; return each one's signature or error.

    Uses the route's optional ``batch(*, items)`` variant (one transaction for
    the batch) when it has one, else calls the route once per message. A
    message that can never succeed gets its PermanentMessageError in its slot
    and does not fail the others; any other exception fails the whole call
    (the caller then retries the messages one by one).
    """
    route = route_for(kind)
    batch = getattr(route, "batch", None)
    if batch is not None:
        return batch(items=[(data, dict(attrs or {})) for data, attrs in items])
    results: list[Signature | PermanentMessageError | None] = []
    for data, attrs in items:
        try:
            results.append(route(data=data, attributes=dict(attrs or {})))
        except PermanentMessageError as exc:
            results.append(exc)
    return results
