"""Measure analytics ingest and the summary query against same-run baselines.

1. Ingest: 200,000 events through the service (validation, tenancy, VADER
   sentiment, topic, one bulk insert per VOC_BATCH_SIZE chunk) against a plain
   bulk insert of the same rows without validation or annotation. Prints
   events/s of both and the ratio (target >= 0.4). Transcripts come from a pool
   of distinct texts (as real traffic repeats: templates, IVR prompts, resent
   events), which the SHA-256 cache serves; the uncached VADER rate is printed
   too.
   Commits do not wait for fsync (synchronous_commit off / PRAGMA
   synchronous=OFF) in both paths: the shared disks here would measure fsync.
2. Summary: 1,000,000 rows over 20 tenants and 90 days, generated in SQL; the
   7-day summary of one tenant with the indexes, then with the indexes dropped
   (the two composite ones; then also the foreign-key index), recreated in the
   same run. Target: >= 10x faster with them.

Runs on a throw-away database: PostgreSQL when DATABASE_URL is set (database
``<name>_bench_analytics``), else SQLite under var/bench-analytics.

    make bench-analytics     # or: .venv/bin/python bench/analytics.py --events 200000
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_DEV", "1")
os.environ.setdefault("VOCOENG_VAR_DIR", str(ROOT / "var" / "bench-analytics"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vocoeng.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")

import django  # noqa: E402

django.setup()

from _common import emit  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import setup_databases, teardown_databases  # noqa: E402

from analytics.models import VocEvent  # noqa: E402
from analytics.schemas import parse_ts  # noqa: E402
from analytics.selectors import voc_summary  # noqa: E402
from analytics.sentiment import sentiment_cache_clear, sentiment_score  # noqa: E402
from analytics.services import events_store, events_validate  # noqa: E402
from vocoeng.models import Tenant  # noqa: E402

TABLE = VocEvent._meta.db_table
OPENERS = [
    "Hi, I was charged twice on my last invoice",
    "The delivery is late again and the tracking page shows nothing",
    "Thanks a lot, the agent was wonderful and very helpful",
    "I cannot log in to my account, the password reset is broken",
    "Please cancel my subscription",
    "The app keeps crashing when I open my orders",
    "I just wanted to check the opening hours",
    "This is the worst service I have ever had",
]
CLOSERS = [
    "and I want a refund.",
    "can you help me today?",
    "great job, really happy.",
    "this is really frustrating.",
    "thank you.",
    "I will call again tomorrow.",
    "no rush.",
]


def transcripts(pool: int) -> list[str]:
    rng = random.Random(7)
    texts = set()
    while len(texts) < pool:
        texts.add(
            f"{rng.choice(OPENERS)}, order {rng.randint(1000, 9999)}, "
            f"{rng.choice(CLOSERS)}"
        )
    return sorted(texts)


def raw_events(n: int, *, tenant: str, pool: int) -> list[dict]:
    rng = random.Random(42)
    texts = transcripts(pool)
    now = datetime.now(UTC)
    kinds = ("call", "agent_action", "tool_invocation", "qos_metric")
    events = []
    for i in range(n):
        kind = kinds[i % 4]
        event = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "tenant_id": tenant,
            "timestamp": (now - timedelta(seconds=i)).isoformat(),
            "event_type": kind,
            "metadata": {"region": "eu"},
        }
        if kind == "call":
            event |= {"transcript": rng.choice(texts), "duration_s": 61.5}
            event["channel"] = "phone"
        elif kind == "agent_action":
            event |= {"agent_id": "a1", "action": "note"}
            event["details"] = {"text": rng.choice(texts)}
        elif kind == "tool_invocation":
            event |= {"tool_name": "lookup", "arguments": {"id": i}}
            event |= {"latency_ms": 12, "success": True}
        else:
            event |= {"metric": "latency_ms", "value": rng.random() * 500}
            event["unit"] = "ms"
        events.append(event)
    return events


def truncate() -> None:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"TRUNCATE {TABLE}")
        else:
            cursor.execute(f"DELETE FROM {TABLE}")  # noqa: S608


def plain_insert(events: list[dict], *, tenant_pk: int, chunk: int) -> float:
    """Insert the same rows with no validation and no annotation."""
    started = time.perf_counter()
    now = datetime.now(UTC)
    for i in range(0, len(events), chunk):
        rows = [
            VocEvent(
                event_id=e["event_id"],
                tenant_id=tenant_pk,
                event_type=e["event_type"],
                ts=parse_ts(e["timestamp"]),
                payload={k: v for k, v in e.items() if k not in ("event_id",)},
                metric=e.get("metric"),
                value=e.get("value"),
                processed_at=now,
            )
            for e in events[i : i + chunk]
        ]
        VocEvent.objects.bulk_create(rows, ignore_conflicts=True, batch_size=1000)
    return time.perf_counter() - started


def service_insert(events: list[dict], *, chunk: int) -> float:
    """Run what the API + ingest task do: validate, annotate, bulk insert."""
    sentiment_cache_clear()
    started = time.perf_counter()
    for i in range(0, len(events), chunk):
        valid, errors = events_validate(events=events[i : i + chunk])
        assert not errors, errors[:3]
        events_store(events=valid)
    return time.perf_counter() - started


def bench_ingest(n: int, pool: int) -> list[tuple[str, str]]:
    tenant = Tenant.objects.create(slug="bench", name="Bench")
    events = raw_events(n, tenant="bench", pool=pool)
    chunk = settings.VOC_BATCH_SIZE
    plain = plain_insert(events, tenant_pk=tenant.pk, chunk=chunk)
    assert VocEvent.objects.count() == n
    truncate()
    service = service_insert(events, chunk=chunk)
    assert VocEvent.objects.count() == n
    scored = VocEvent.objects.filter(sentiment__isnull=False).count()
    truncate()
    texts = [f"unique text number {i}, the agent was helpful" for i in range(2000)]
    started = time.perf_counter()
    for text in texts:
        sentiment_score(text)
    vader = len(texts) / (time.perf_counter() - started)
    ratio = plain / service
    emit(
        bench="analytics",
        figure="service ingest (validate, sentiment, bulk insert)",
        value=n / service,
        unit="events/s",
        baseline="plain bulk insert of the same rows",
        baseline_value=n / plain,
        target=0.4,
    )
    return [
        ("ingest events", f"{n:,} ({chunk} per batch, {pool} distinct texts)"),
        ("plain bulk insert", f"{n / plain:,.0f} events/s ({plain:.1f} s)"),
        ("service ingest", f"{n / service:,.0f} events/s ({service:.1f} s)"),
        ("rows with sentiment", f"{scored:,}"),
        ("ratio service/plain", f"{ratio:.2f}  (target >= 0.4: {_ok(ratio >= 0.4)})"),
        ("VADER uncached", f"{vader:,.0f} texts/s"),
    ]


def generate_rows(n: int, tenants: list[int]) -> float:
    """Insert ``n`` rows in one SQL statement (no Python per row)."""
    started = time.perf_counter()
    first, count = tenants[0], len(tenants)
    assert tenants == list(range(first, first + count))
    minutes = 90 * 24 * 60
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"""
                INSERT INTO {TABLE} (event_id, tenant_id, event_type, ts, payload,
                    sentiment, topic, metric, value, processed_at)
                SELECT md5(i::text)::uuid, %s + i %% %s,
                    (ARRAY['call','agent_action','tool_invocation','qos_metric'])
                        [1 + (i / %s) %% 4],
                    now() - make_interval(mins => ((i * 7919) %% %s)::int),
                    '{{}}'::jsonb,
                    CASE WHEN (i / %s) %% 4 = 0
                         THEN ((i * 31) %% 2001) / 1000.0 - 1 END,
                    NULL,
                    CASE WHEN (i / %s) %% 4 = 3 THEN 'latency_ms' END,
                    CASE WHEN (i / %s) %% 4 = 3 THEN (i * 17) %% 1000 END,
                    now()
                FROM generate_series(1::bigint, %s) AS i
                """,  # noqa: S608 - fixed table name, values are parameters
                [first, count, count, minutes, count, count, count, n],
            )
        else:
            cursor.execute(
                f"""
                WITH RECURSIVE seq(i) AS (
                    SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < %s)
                INSERT INTO {TABLE} (event_id, tenant_id, event_type, ts, payload,
                    sentiment, topic, metric, value, processed_at)
                SELECT printf('%%032x', i), %s + i %% %s,
                    CASE (i / %s) %% 4 WHEN 0 THEN 'call' WHEN 1 THEN 'agent_action'
                         WHEN 2 THEN 'tool_invocation' ELSE 'qos_metric' END,
                    strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now',
                             printf('-%%d minutes', (i * 7919) %% %s)),
                    '{{}}',
                    CASE WHEN (i / %s) %% 4 = 0
                         THEN ((i * 31) %% 2001) / 1000.0 - 1 END,
                    NULL,
                    CASE WHEN (i / %s) %% 4 = 3 THEN 'latency_ms' END,
                    CASE WHEN (i / %s) %% 4 = 3 THEN (i * 17) %% 1000 END,
                    strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')
                FROM seq
                """,  # noqa: S608 - fixed table name, values are parameters
                [n, first, count, count, minutes, count, count, count],
            )
        cursor.execute(f"ANALYZE {TABLE}")
    return time.perf_counter() - started


def secondary_indexes() -> dict[str, list[str]]:
    """Return the non-unique indexes of the table: name -> columns."""
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, TABLE)
    return {
        name: c["columns"]
        for name, c in constraints.items()
        if c["index"] and not c["unique"] and not c["primary_key"]
    }


def set_indexes(indexes: dict[str, list[str]], *, present: bool) -> None:
    with connection.cursor() as cursor:
        for name, columns in indexes.items():
            if present:
                cols = ", ".join(columns)
                cursor.execute(f"CREATE INDEX {name} ON {TABLE} ({cols})")
            else:
                cursor.execute(f"DROP INDEX {name}")
        cursor.execute(f"ANALYZE {TABLE}")


def same(a: object, b: object) -> bool:
    """Return whether two summaries agree, floats to their last rounded digit.

    Without an index the database sums the sentiments in another order, and
    a float sum rounded to 4 places can then differ in its last digit.
    """
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1.5e-4
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(same, a, b))
    return a == b


def time_summary(tenant: Tenant, runs: int) -> tuple[float, dict]:
    voc_summary(tenant=tenant, days=7)  # warm the cache / plan
    times, result = [], {}
    for _ in range(runs):
        started = time.perf_counter()
        result = voc_summary(tenant=tenant, days=7)
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def bench_summary(n: int, runs: int) -> list[tuple[str, str]]:
    tenants = [
        Tenant.objects.create(slug=f"t{i:02d}", name=f"Tenant {i}").pk
        for i in range(20)
    ]
    indexes = secondary_indexes()
    composite = {k: v for k, v in indexes.items() if len(v) > 1}
    fk_only = {k: v for k, v in indexes.items() if len(v) == 1}
    # Generate without indexes (faster), then build them once.
    set_indexes(indexes, present=False)
    generated = generate_rows(n, tenants)
    set_indexes(indexes, present=True)
    total = VocEvent.objects.count()
    tenant = Tenant.objects.get(pk=tenants[3])
    indexed, expected = time_summary(tenant, runs)
    set_indexes(composite, present=False)
    fk, r1 = time_summary(tenant, runs)
    set_indexes(fk_only, present=False)
    bare, r2 = time_summary(tenant, runs)
    set_indexes(indexes, present=True)
    assert same(r1, expected) and same(r2, expected), "summary changed without indexes"
    in_window = sum(t["count"] for t in expected["by_type"].values())
    ratio = bare / indexed
    emit(
        bench="analytics",
        figure=f"7-day summary of one tenant, {total:,} rows",
        value=indexed * 1000,
        unit="ms",
        baseline="the same query without the indexes",
        baseline_value=bare * 1000,
        better="lower",
        target=10,
    )
    rows = [
        ("summary rows", f"{total:,} (generated in {generated:.1f} s), 20 tenants"),
        ("tenant rows in 7 days", f"{in_window:,}"),
        ("summary with indexes", f"{indexed * 1000:.1f} ms (median of {runs})"),
    ]
    if fk_only:
        rows.append(
            ("without composite idx", f"{fk * 1000:.1f} ms (single-column kept)")
        )
    rows += [
        ("without the indexes", f"{bare * 1000:.1f} ms ({', '.join(indexes)})"),
        ("speed-up", f"{ratio:.1f}x  (target >= 10x: {_ok(ratio >= 10)})"),
    ]
    return rows


def relax_durability() -> None:
    """Stop waiting for fsync on commit, for both paths alike.

    The machines here are shared and their disks slow; the bench compares the
    CPU cost of validation and annotation, not the disk.
    """
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET synchronous_commit TO off")
        else:
            cursor.execute("PRAGMA synchronous=OFF")


def _ok(flag: bool) -> str:
    return "met" if flag else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--pool", type=int, default=2_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    db = connection.settings_dict
    db.setdefault("TEST", {})
    if connection.vendor == "postgresql":
        db["TEST"]["NAME"] = f"{db['NAME']}_bench_analytics"
    else:
        db["TEST"]["NAME"] = str(Path(settings.VAR_DIR) / "bench-analytics.sqlite3")
    old = setup_databases(verbosity=0, interactive=False, keepdb=False)
    try:
        relax_durability()
        which = f"{connection.vendor} ({connection.settings_dict['NAME']})"
        print(f"database: {which}", flush=True)
        rows = bench_ingest(args.events, args.pool)
        truncate()
        rows += bench_summary(args.rows, args.runs)
    finally:
        connection.close()
        teardown_databases(old, verbosity=0)
    width = max(len(k) for k, _ in rows)
    print(f"\n{'measure'.ljust(width)}  value")
    print(f"{'-' * width}  {'-' * 50}")
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")


if __name__ == "__main__":
    main()
