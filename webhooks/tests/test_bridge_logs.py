"""handle_many: the lines of a batch, written together, each its own record."""

from __future__ import annotations

import io
import json
import logging

from vocoeng.logging_setup import ContextFilter, JsonFormatter
from webhooks.bridge.handling import handle_many


def _record(logger: logging.Logger, n: int, level: int = logging.INFO):
    return logger.makeRecord(
        logger.name, level, __file__, 0, "line %s", (n,), None, "f", {"n": n}
    )


def test_a_stream_handler_gets_every_line_in_one_write():
    logger = logging.getLogger("test.bridge.handle_many")
    logger.propagate = False
    stream = io.StringIO()
    writes = []
    stream_write = stream.write

    def write(text: str) -> int:
        writes.append(text)
        return stream_write(text)

    stream.write = write  # type: ignore[method-assign]
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    handler.setLevel(logging.INFO)
    seen: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger.handlers = [handler, Collect()]
    try:
        handle_many(logger, [_record(logger, n) for n in range(3)])
        handle_many(logger, [_record(logger, 9, logging.DEBUG)])
    finally:
        logger.handlers = []

    assert len(writes) == 1  # one write (and one flush) for the batch
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["message"], r["n"]) for r in lines] == [
        ("line 0", 0),
        ("line 1", 1),
        ("line 2", 2),
    ]
    assert [r.getMessage() for r in seen] == ["line 0", "line 1", "line 2", "line 9"]


def test_a_logger_filter_drops_its_records():
    logger = logging.getLogger("test.bridge.handle_many.filtered")
    logger.propagate = False
    stream = io.StringIO()
    logger.handlers = [logging.StreamHandler(stream)]
    logger.addFilter(lambda record: record.args != (1,))
    try:
        handle_many(logger, [_record(logger, n) for n in range(3)])
    finally:
        logger.handlers = []
        logger.filters = []
    assert stream.getvalue().splitlines() == ["line 0", "line 2"]
