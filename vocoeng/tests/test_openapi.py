"""The OpenAPI schema at /api/schema/ and its UIs (served without a CDN)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.management import call_command
from django.urls import URLPattern, URLResolver, get_resolver

# Paths served but not part of the API: the schema itself, admin, DRF login,
# the Prometheus exposition.
UNDOCUMENTED = re.compile(r"^/(api/schema/|admin/|api-auth/|metrics$|static/)")


def _routes(patterns: list, prefix: str = "") -> Iterator[str]:
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from _routes(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern):
            yield route


def _openapi_path(route: str) -> str:
    """Turn a Django route (path() or router regex) into an OpenAPI path."""
    path = route.replace("^", "").replace("$", "")
    path = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", path)
    path = path.replace("{pk}", "{id}")  # drf-spectacular names pk by the field
    path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", path)
    return "/" + path.replace("\\.", ".").replace("\\", "")


def _served_paths() -> set[str]:
    paths = {_openapi_path(route) for route in _routes(get_resolver().url_patterns)}
    return {
        p
        for p in paths
        if not UNDOCUMENTED.match(p)
        and "{format}" not in p  # DRF's .json suffix routes
        and p != "/api/v1/"  # the browsable API root
        and p != "/api/v1/analytics/summary"  # alias of summary/ (documented)
    }


@pytest.fixture
def schema(client) -> dict[str, Any]:
    response = client.get(
        "/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json"
    )
    assert response.status_code == 200
    return response.json()


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_spectacular_validate_fail_on_warn_passes(tmp_path) -> None:
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    assert out.read_text().startswith("openapi: 3.")


@pytest.mark.django_db
def test_every_served_endpoint_is_in_the_schema(schema) -> None:
    served = _served_paths()
    # The enumeration itself works (the test would pass vacuously otherwise).
    assert {"/process", "/webhooks/whatsapp/", "/api/v1/runs/{id}/cancel/"} <= served
    assert served - set(schema["paths"]) == set()


@pytest.mark.django_db
def test_every_operation_has_responses_and_every_ref_resolves(schema) -> None:
    components = schema["components"]["schemas"]
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            assert operation["responses"], f"{method} {path} has no responses"
            assert "security" in operation, f"{method} {path} says nothing of auth"
    for ref in _refs(schema):
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[-1] in components, ref


@pytest.mark.django_db
def test_security_schemes_describe_token_session_and_webhook_signatures(
    schema,
) -> None:
    schemes = schema["components"]["securitySchemes"]
    assert schemes["tokenAuth"] == {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": schemes["tokenAuth"]["description"],
    }
    assert "Token <key>" in schemes["tokenAuth"]["description"]
    assert schemes["cookieAuth"]["in"] == "cookie"
    assert schemes["whatsappSignature"]["name"] == "X-Hub-Signature-256"
    assert schemes["aisensySecret"]["name"] == "X-AiSensy-Secret"
    assert schemes["pubsubOidc"]["scheme"] == "bearer"

    paths = schema["paths"]
    for path, item in paths.items():
        if path.startswith("/api/v1/"):
            for operation in item.values():
                assert {"tokenAuth": []} in operation["security"], path
                assert {"cookieAuth": []} in operation["security"], path
    assert paths["/webhooks/api/"]["post"]["security"] == [{"tokenAuth": []}]
    whatsapp = paths["/webhooks/whatsapp/"]
    assert whatsapp["post"]["security"] == [{"whatsappSignature": []}]
    assert whatsapp["get"]["security"] == [{}]
    assert paths["/webhooks/aisensy/"]["post"]["security"] == [{"aisensySecret": []}]
    # OIDC only when PUBSUB_PUSH_AUDIENCE is set: both alternatives listed.
    assert paths["/webhooks/pubsub/"]["post"]["security"] == [
        {"pubsubOidc": []},
        {},
    ]
    for path in ("/process", "/health", "/readyz"):
        for operation in paths[path].values():
            assert operation["security"] == [{}], path


@pytest.mark.django_db
def test_request_and_response_schemas_match_the_api(schema) -> None:
    paths, components = schema["paths"], schema["components"]["schemas"]
    inbound = "#/components/schemas/InboundMessageRequest"
    for path in ("/process", "/webhooks/api/"):
        body = paths[path]["post"]["requestBody"]["content"]
        assert body["application/json"]["schema"] == {"$ref": inbound}
    assert set(components["InboundMessageRequest"]["required"]) == {
        "user_id",
        "message",
    }
    runs = paths["/api/v1/runs/"]["post"]
    assert set(runs["responses"]) >= {"200", "201", "400", "401", "409"}
    assert runs["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RunCreateRequest"
    }
    assert {p["name"] for p in paths["/api/v1/runs/"]["get"]["parameters"]} >= {
        "status",
        "idempotency_key",
        "limit",
        "offset",
    }
    summary = paths["/api/v1/analytics/summary/"]["get"]
    ok = summary["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/Summary"}  # one object, no list
    assert {"tenant_id", "days", "by_type", "daily", "qos"} <= set(
        components["Summary"]["properties"]
    )
    events = paths["/api/v1/analytics/events/"]["post"]["responses"]["202"]
    assert events["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/IngestResult"
    }
    api_source = paths["/webhooks/api/"]["post"]
    # The view reads the raw JSON body: no form encodings documented.
    assert set(api_source["requestBody"]["content"]) == {"application/json"}
    assert "202" in api_source["responses"]


@pytest.mark.django_db
@pytest.mark.parametrize("page", ["/api/schema/swagger-ui/", "/api/schema/redoc/"])
def test_schema_uis_load_their_assets_locally(client, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    html = response.content.decode()
    assert "/api/schema/" in html
    assets = re.findall(r"""(?:src|href)=["']([^"']+\.(?:js|css|png))["']""", html)
    assert assets, html
    for asset in assets:
        assert asset.startswith("/static/drf_spectacular_sidecar/"), asset
        served = client.get(asset)
        assert served.status_code == 200, asset
        b"".join(served.streaming_content if served.streaming else [served.content])
    assert "cdn" not in html.lower()


@pytest.mark.django_db
def test_browsable_api_root_links_the_schema_ui(admin_client) -> None:
    response = admin_client.get("/api/v1/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    body = response.json()
    assert body["schema"].endswith("/api/schema/swagger-ui/")
    assert body["conversations"].endswith("/api/v1/conversations/")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path", ["/api/v1/runs/not-a-uuid/", "/api/v1/nothing/", "/webhooks/nope/"]
)
def test_unrouted_api_and_webhook_paths_answer_json_404(client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"error": "not found"}


@pytest.mark.django_db
def test_unrouted_page_keeps_djangos_html_404(client) -> None:
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")
