"""Fixtures of the analytics tests: tenants, their API clients, event builders."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from rest_framework.test import APIClient

from vocoeng.models import Tenant
from vocoeng.services import api_key_create


def make_event(event_type: str = "call", tenant: str = "acme", **fields: Any) -> dict:
    """Return a valid event of ``event_type``; ``fields`` override or add fields."""
    base = {
        "event_id": str(uuid.uuid4()),
        "tenant_id": tenant,
        "timestamp": datetime.now(UTC).isoformat(),
        "event_type": event_type,
        "metadata": {"source": "test"},
    }
    per_type = {
        "call": {
            "transcript": "Thanks, the agent was great and fixed my issue quickly!",
            "duration_s": 42.5,
            "channel": "phone",
        },
        "agent_action": {
            "agent_id": "agent-7",
            "action": "escalate",
            "details": {"text": "Customer is angry about a double charge"},
        },
        "tool_invocation": {
            "tool_name": "lookup_order",
            "arguments": {"order": "123"},
            "latency_ms": 87,
            "success": True,
        },
        "qos_metric": {"metric": "latency_ms", "value": 120.0, "unit": "ms"},
    }
    return {**base, **per_type.get(event_type, {}), **fields}


@pytest.fixture
def tenant_a(db: None) -> Tenant:
    return Tenant.objects.create(slug="acme", name="Acme")


@pytest.fixture
def tenant_b(db: None) -> Tenant:
    return Tenant.objects.create(slug="globex", name="Globex")


def key_client(tenant: Tenant) -> APIClient:
    """Return an API client authenticated with a new key of ``tenant``."""
    _, plaintext = api_key_create(tenant=tenant, name="test")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {plaintext}")
    return client


@pytest.fixture
def client_a(tenant_a: Tenant) -> APIClient:
    return key_client(tenant_a)


@pytest.fixture
def client_b(tenant_b: Tenant) -> APIClient:
    return key_client(tenant_b)


@pytest.fixture
def eager_celery() -> Iterator[None]:
    """Run enqueued tasks in-process (API tests; the worker tests use a real one)."""
    from vocoeng.celery import app

    saved = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = saved
