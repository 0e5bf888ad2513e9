"""Format log records as JSON lines or console lines, with their context.

``settings.LOGGING`` (chosen by ``LOG_FORMAT``) wires these into every
process: the web (Django applies LOGGING), Celery workers (vocoeng.celery
answers Celery's ``setup_logging`` signal with the same dict) and management
commands such as the bridge. :class:`ContextFilter` adds to each record the
correlation id current in its context, the Celery task it runs in and the
process role, so one ``grep <id>`` follows one message.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _StdlibJsonFormatter
from pythonjsonlogger.orjson import OrjsonFormatter

from . import correlation

# Record attributes never written as JSON fields. Celery passes its log
# context (task args and kwargs, i.e. message bodies and event payloads) as
# ``extra={"data": ...}``; the message text already says what matters.
_NOT_FIELDS = ("data", "color_message", "request", "server_time")

_role: str | None = None
_guessed = False  # the command line was read (once: it does not change)


def _role_from_argv(argv: list[str]) -> str | None:
    """Guess the role of a web server or the bridge from its command line.

    Celery names its processes itself (vocoeng.celery: worker_init, beat_init).
    """
    words = [os.path.basename(a) for a in argv]
    if (argv and "gunicorn" in argv[0]) or "runserver" in words:
        return "web"
    if "pubsub_bridge" in words:
        return "bridge"
    return None


def role_set(role: str) -> None:
    """Name this process's role (web, worker, beat, bridge) in its records."""
    global _role
    _role = role


def role_default(role: str) -> None:
    """Name the role unless the command line or an earlier call already did."""
    if role_get() is None:
        role_set(role)


def role_get() -> str | None:
    """Return this process's role, guessed from argv when nobody named it.

    Guessed once: a process with no role (a shell, a script) read the
    environment and its command line again for every record (~10 us each).
    """
    global _role, _guessed
    if _role is None and not _guessed:
        _guessed = True
        _role = os.environ.get("VOCOENG_PROCESS_ROLE") or _role_from_argv(sys.argv)
    return _role


class ContextFilter(logging.Filter):
    """Add ``correlation_id``, ``task_name``, ``task_id`` and ``role`` to records.

    Only what is known is added: a record logged outside a request or a
    correlated task has no ``correlation_id`` field at all.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        value = correlation.current()
        if value and not hasattr(record, "correlation_id"):
            record.correlation_id = value
        task = correlation.current_task()
        if task is not None and not hasattr(record, "task_name"):
            record.task_name, record.task_id = task
        role = role_get()
        if role and not hasattr(record, "role"):
            record.role = role
        return True


class AccessLogFilter(logging.Filter):
    """Give gunicorn's access records the correlation id of their response.

    gunicorn logs the access line after the app returned, when the request's
    id is no longer current; the response's ``X-Request-ID`` still names it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        atoms = record.args
        if isinstance(atoms, Mapping) and not hasattr(record, "correlation_id"):
            value = atoms.get("{x-request-id}o")
            if value and value != "-":
                record.correlation_id = value
        return True


class JsonFormatter(OrjsonFormatter):
    """Write one JSON object per record: timestamp, level, logger, message, context.

    Extra fields passed by callers (``extra={...}``) are kept, except the
    ones in ``_NOT_FIELDS``; exceptions come as ``exc_info`` text.

    Encoded with orjson (python-json-logger's own OrjsonFormatter): ~6 µs a
    bridge line here against ~14 with the json module, and the bridge writes
    two lines a message. What orjson refuses (a lone surrogate in a string,
    an integer beyond 64 bits) is written by the json module instead, so no
    record is lost to the encoder.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("reserved_attrs", [*RESERVED_ATTRS, *_NOT_FIELDS])
        kwargs.setdefault("rename_fields", {"levelname": "level", "name": "logger"})
        kwargs.setdefault("timestamp", True)
        super().__init__(["levelname", "name", "message"], **kwargs)
        self._fallback = _StdlibJsonFormatter(json_ensure_ascii=False)

    def format(self, record: logging.LogRecord) -> str:
        """Return the record's JSON line: what ``BaseJsonFormatter.format`` writes.

        The same fields (timestamp, level, logger, message, exc_info and
        stack_info, then the record's extra attributes, sorted by name), in
        one pass over the record instead of python-json-logger's general path
        (defaults, static fields, renames, one by one): a bridge line costs
        ~19 µs from its record to its write here, against ~23. A record whose
        message is a dict takes the general path.
        """
        if isinstance(record.msg, dict):
            return super().format(record)
        record.message = record.getMessage()
        data: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, tz=UTC),
            "level": record.levelname,
            "logger": record.name,
            "message": record.message,
        }
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exc_info"] = record.exc_text
        if record.stack_info:
            data["stack_info"] = self.formatStack(record.stack_info)
        values = record.__dict__
        for key in sorted(values.keys() - self._skip_fields):
            if key[:1] != "_":
                data[key] = values[key]
        return self.prefix + self.jsonify_log_record(data)

    def add_fields(
        self,
        log_data: dict[str, Any],
        record: logging.LogRecord,
        message_dict: dict[str, Any],
    ) -> None:
        # Timestamp first: the lines read (and sort) like console lines. A
        # dict keeps a key where it was first set.
        log_data["timestamp"] = None
        super().add_fields(log_data, record, message_dict)

    def jsonify_log_record(self, log_data: dict[str, Any]) -> str:
        try:
            return super().jsonify_log_record(log_data)
        except orjson.JSONEncodeError:
            return self._fallback.jsonify_log_record(log_data)


class ConsoleFormatter(logging.Formatter):
    """Write readable lines; the correlation id, when known, ends the line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not args and "fmt" not in kwargs:
            kwargs["fmt"] = "%(asctime)s %(levelname)s %(name)s: %(message)s"
        super().__init__(*args, **kwargs)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        value = getattr(record, "correlation_id", None)
        return f"{line} [cid={value}]" if value else line
