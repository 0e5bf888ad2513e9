"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any


def ensure_database(url: str) -> None:
    """Create the PostgreSQL database named in ``url`` when it is missing."""
    if not url.startswith(("postgres://", "postgresql://")):
        return
    import psycopg
    from psycopg import sql

    base, _, name = url.rpartition("/")
    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def analyze_database() -> None:
    """Refresh the planner's statistics of Django's database (PostgreSQL).

    What autovacuum does on a default server; on this machine it is off, and
    without statistics the planner picks plans that grow with every earlier
    bench's rows (the reply's history read through a status index: 52,000
    index entries for 2 rows). Call after the bench's rows are in place."""
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """Return user+system CPU seconds used so far by process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# One machine-readable line per headline figure, on stdout beside the human
# output, so bench/run_all.py can build one table from every script.
BENCH_PREFIX = "BENCH "
OPS = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    "==": lambda a, b: a == b,
}


def emit(
    *,
    bench: str,
    figure: str,
    value: float,
    unit: str,
    baseline: str | None = None,
    baseline_value: float | None = None,
    better: str = "higher",
    target: float | None = None,
    op: str = ">=",
) -> dict[str, Any]:
    """Print one figure as a ``BENCH {json}`` line and return it.

    The ratio is oriented so that above 1 means better than the baseline:
    value / baseline for rates (``better="higher"``), baseline / value for
    times (``better="lower"``: a speed-up). ``target`` is checked (``op``)
    against the ratio when there is a baseline, else against the value, so a
    count that must be zero reads ``value=lost, target=0, op="=="``.
    """
    if better not in ("higher", "lower"):
        raise ValueError(f"better must be 'higher' or 'lower', not {better!r}")
    if op not in OPS:
        raise ValueError(f"op must be one of {sorted(OPS)}, not {op!r}")
    ratio = None
    if baseline_value is not None:
        num, den = (
            (value, baseline_value) if better == "higher" else (baseline_value, value)
        )
        # A zero divisor (nothing measured) leaves the ratio blank, not infinite.
        ratio = num / den if den else None
    met = None
    if target is not None:
        subject = ratio if baseline_value is not None else value
        met = None if subject is None else OPS[op](subject, target)
    record = {
        "bench": bench,
        "figure": figure,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "baseline_value": baseline_value,
        "better": better,
        "ratio": ratio,
        "target": target,
        "op": op,
        "met": met,
    }
    print(BENCH_PREFIX + json.dumps(record), flush=True)
    return record


def parse_figure(line: str) -> dict[str, Any] | None:
    """Return the figure of a ``BENCH {json}`` line, None for any other line.

    Raises ValueError for a BENCH line that is not a figure, so a broken
    emitter shows up as a failed script instead of a missing row.
    """
    if not line.startswith(BENCH_PREFIX):
        return None
    try:
        record = json.loads(line[len(BENCH_PREFIX) :])
    except json.JSONDecodeError as exc:
        raise ValueError(f"unreadable BENCH line: {exc}") from exc
    if not isinstance(record, dict):
        raise ValueError("a BENCH line must hold a JSON object")
    missing = {"bench", "figure", "value", "unit"} - record.keys()
    if missing:
        raise ValueError(f"BENCH line without {', '.join(sorted(missing))}")
    return record
