"""Fuzz every operation of /api/schema/ in-process through the WSGI app.

Schemathesis generates valid and invalid requests from the schema; each must
get a documented, schema-conforming answer and never a 5xx. API calls carry a
real API key of a test tenant; the WhatsApp webhook gets a valid signature
computed over the exact body sent, and AiSensy the real secret, so the
parsers behind them are fuzzed too (not just the signature check).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from vocoeng.models import Tenant
from vocoeng.services import api_key_create

APP_SECRET = "fuzz-app-secret"
AISENSY_SECRET = "fuzz-aisensy-secret"
VERIFY_TOKEN = "fuzz-verify"
EXAMPLES = 20  # per operation: 20 operations in ~40 s on a loaded machine
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def api_key(db) -> str:
    tenant = Tenant.objects.create(slug="fuzz", name="Fuzz tenant")
    return api_key_create(tenant=tenant, name="schemathesis")[1]


@pytest.fixture
def api_schema(db, settings, api_key) -> Iterator[schemathesis.BaseSchema]:
    settings.BUS = "direct"
    settings.WHATSAPP_APP_SECRET = APP_SECRET
    settings.AISENSY_WEBHOOK_SECRET = AISENSY_SECRET
    settings.WHATSAPP_VERIFY_TOKEN = VERIFY_TOKEN
    settings.WHATSAPP_ACCESS_TOKEN = ""  # delivery logged, never sent
    settings.PUBSUB_PUSH_AUDIENCE = ""
    settings.AI_PROVIDER = ""  # /process answers with the offline echo provider
    settings.ALLOWED_HOSTS = ["localhost", "testserver"]
    # As Django's test client does: the WSGI handler would otherwise close the
    # connection after each request, and with it the test's transaction.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)
    from conftest import purge_queues

    purge_queues()  # chains the pushes enqueued for rows that are rolled back


def _operations() -> list[tuple[str, str]]:
    """Return every (METHOD, path) of the schema, for parametrizing (no HTTP)."""
    from drf_spectacular.generators import SchemaGenerator

    paths = SchemaGenerator().get_schema(request=None, public=True)["paths"]
    return sorted((m.upper(), p) for p, item in paths.items() for m in item)


def _sign(raw: bytes) -> str:
    return "sha256=" + hmac.new(APP_SECRET.encode(), raw, hashlib.sha256).hexdigest()


def _cases(operation) -> st.SearchStrategy:
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    return st.one_of(*(operation.as_strategy(generation_mode=m) for m in modes))


@pytest.mark.parametrize(("method", "path"), _operations())
def test_no_operation_answers_5xx_or_off_schema(
    api_schema, api_key: str, method: str, path: str
) -> None:
    operation = api_schema[path][method]
    seen = []

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=_cases(operation))
    def fuzz(case) -> None:
        headers = {"Authorization": f"Token {api_key}"}
        kwargs = {}
        if path == "/webhooks/whatsapp/" and method == "GET":
            query = case.query if isinstance(case.query, dict) else {}
            if query.get("hub.mode") == "subscribe":
                query["hub.verify_token"] = VERIFY_TOKEN
        if path == "/webhooks/aisensy/":
            headers["X-AiSensy-Secret"] = AISENSY_SECRET
        if path == "/webhooks/whatsapp/" and method == "POST":
            # Sign the exact bytes schemathesis sends (valid JSON or not).
            sent = case.as_transport_kwargs()
            raw = sent.get("data") or b""
            raw = raw.encode() if isinstance(raw, str) else raw
            headers["X-Hub-Signature-256"] = _sign(raw)
            kwargs["data"] = raw
        response = case.call_and_validate(headers=headers, checks=CHECKS, **kwargs)
        seen.append(response.status_code)

    fuzz()
    # The key, signature and secret were accepted at least once, so the
    # fuzzing reached the code behind the authentication.
    assert set(seen) - {401, 403}, seen
