"""The tool registry and runner: validation, time limits, HTTP tools, built-ins."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connection

from conversations.models import HttpTool, KnowledgeEntry
from conversations.tests.tools import ran
from conversations.tools import ToolContext, tool, tool_invoke, tools_resolve
from vocoeng.models import Tenant
from vocoeng.testing.fake_ai import LoopbackServer, Reply

pytestmark = [pytest.mark.django_db, pytest.mark.timeout(60)]

CTX = ToolContext(tenant_id=None, agent_id="default", ref="test:1")


@pytest.fixture(autouse=True)
def _forget_calls() -> Iterator[None]:
    ran.clear()
    yield
    ran.clear()


def _one(name: str):
    (found,) = tools_resolve(names=[name])
    return found


def test_valid_arguments_reach_the_tool_once() -> None:
    result = tool_invoke(tool=_one("test_add"), arguments={"a": 6, "b": 7}, context=CTX)
    assert result.ok
    assert json.loads(result.content) == {"sum": 13}
    assert ran == [{"a": 6, "b": 7}]


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        ({"a": "6", "b": 7}, "a: '6' is not of type 'integer'"),
        ({"a": 6}, "'b' is a required property"),
        ({"a": 6, "b": 7, "c": 1}, "Additional properties are not allowed"),
        ('{"a": 6, "b": ', "arguments must be a JSON object"),
    ],
)
def test_invalid_arguments_never_reach_the_tool(arguments: Any, reason: str) -> None:
    result = tool_invoke(tool=_one("test_add"), arguments=arguments, context=CTX)
    assert not result.ok
    assert reason in result.error
    assert result.error.startswith("invalid arguments")
    assert json.loads(result.content) == {"error": result.error}
    assert ran == []


def test_a_tool_that_raises_gives_an_error_result() -> None:
    result = tool_invoke(tool=_one("test_boom"), arguments={}, context=CTX)
    assert not result.ok
    assert result.error == "ConnectionError: inventory service unreachable"


def test_a_slow_tool_is_abandoned_at_its_timeout() -> None:
    started = time.monotonic()
    result = tool_invoke(tool=_one("test_slow"), arguments={}, context=CTX)
    assert time.monotonic() - started < 3  # not the 4 s the tool sleeps
    assert not result.ok
    assert result.error == "timed out after 0.3s"


def test_a_deadline_shortens_the_tool_timeout() -> None:
    tool_ = _one("test_add")
    result = tool_invoke(
        tool=tool_, arguments={"a": 1, "b": 2}, context=CTX, deadline=time.monotonic()
    )
    assert not result.ok and "no time left" in result.error
    assert ran == []


def test_context_reaches_a_tool_that_asks_for_it() -> None:
    ctx = ToolContext(tenant_id=7, agent_id="a", ref="message:x")
    result = tool_invoke(tool=_one("test_whoami"), arguments={}, context=ctx)
    assert json.loads(result.content) == {"tenant_id": 7, "ref": "message:x"}


def test_unknown_names_are_logged_and_ignored(caplog) -> None:
    found = tools_resolve(names=["test_add", "no_such_tool", "test_add"])
    assert [t.name for t in found] == ["test_add"]
    assert "tools_unknown names=no_such_tool" in caplog.text


def test_registering_a_second_tool_under_a_taken_name_fails() -> None:
    with pytest.raises(ValueError, match="already registered"):
        tool(description="x", parameters={"type": "object"}, name="test_add")(
            lambda: None
        )


def test_a_tool_schema_must_be_an_object_schema() -> None:
    with pytest.raises(ValueError, match="object schema"):
        tool(description="x", parameters={"type": "string"}, name="bad_schema")(
            lambda: None
        )


# -- built-in tools -----------------------------------------------------------


def test_current_time_in_a_timezone() -> None:
    result = tool_invoke(
        tool=_one("current_time"), arguments={"timezone": "Asia/Kolkata"}, context=CTX
    )
    assert result.ok
    data = json.loads(result.content)
    assert data["utc_offset"] == "+0530"
    assert data["datetime"].endswith("+05:30")


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../../etc/passwd"])
def test_current_time_with_an_unknown_timezone_is_an_error(zone: str) -> None:
    result = tool_invoke(
        tool=_one("current_time"), arguments={"timezone": zone}, context=CTX
    )
    assert not result.ok
    assert "unknown timezone" in result.error


@pytest.fixture
def two_tenants() -> tuple[Tenant, Tenant]:
    a = Tenant.objects.create(slug="shop-a", name="Shop A")
    b = Tenant.objects.create(slug="shop-b", name="Shop B")
    rows = [
        (a, "What are your opening hours?", "A is open 9 to 5.", "hours, open", True),
        (a, "Do you deliver?", "A delivers in town.", "", True),
        (b, "What are your opening hours?", "B is open all night.", "hours", True),
        (a, "When are you open on holidays?", "A is closed on holidays.", "", False),
    ]
    KnowledgeEntry.objects.bulk_create(
        KnowledgeEntry(tenant=t, question=q, answer=ans, keywords=k, enabled=on)
        for t, q, ans, k, on in rows
    )
    return a, b


def _faq(tenant: Tenant | None, query: str):
    ctx = ToolContext(
        tenant_id=tenant.pk if tenant else None, agent_id="default", ref="t"
    )
    return tool_invoke(tool=_one("faq_lookup"), arguments={"query": query}, context=ctx)


# The tool reads the database from a pool thread: committed rows only.
@pytest.mark.django_db(transaction=True)
def test_faq_lookup_returns_only_the_calling_tenants_entries(two_tenants) -> None:
    a, b = two_tenants
    found_a = json.loads(_faq(a, "When do you open? hours please").content)
    found_b = json.loads(_faq(b, "When do you open? hours please").content)
    assert [m["answer"] for m in found_a["matches"]] == ["A is open 9 to 5."]
    assert [m["answer"] for m in found_b["matches"]] == ["B is open all night."]


# The tool reads the database from a pool thread: committed rows only.
@pytest.mark.django_db(transaction=True)
def test_faq_lookup_ranks_and_finds_nothing_for_unrelated_words(two_tenants) -> None:
    a, _ = two_tenants
    ranked = json.loads(_faq(a, "opening hours or deliver").content)["matches"]
    assert [m["answer"] for m in ranked] == ["A is open 9 to 5.", "A delivers in town."]
    assert json.loads(_faq(a, "giraffes").content) == {"matches": []}


# The tool reads the database from a pool thread: committed rows only.
@pytest.mark.django_db(transaction=True)
def test_faq_lookup_without_a_tenant_is_an_error(two_tenants) -> None:
    result = _faq(None, "hours")
    assert not result.ok and "no tenant" in result.error


# -- HTTP tools ---------------------------------------------------------------


class ToolEndpoint(LoopbackServer):
    """A tool's HTTP endpoint: records raw headers, answers by path."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str, dict[str, str], Any]] = []
        self.lock = threading.Lock()

    def respond(self, method: str, path: str, headers: dict[str, str], body: Any):
        with self.lock:
            self.seen.append((method, path, headers, body))
        if path == "/slow":
            self.sleep(5)
        if path == "/broken":
            return Reply(503, {"detail": "maintenance"})
        return Reply(200, {"order": body, "status": "shipped"})


@pytest.fixture
def endpoint() -> Iterator[ToolEndpoint]:
    with ToolEndpoint() as server:
        yield server


def _http_tool(endpoint: ToolEndpoint, path: str, **kwargs: Any) -> HttpTool:
    return HttpTool.objects.create(
        name=kwargs.pop("name", "order_status"),
        description="Look up an order",
        url=endpoint.url + path,
        method="POST",
        parameters={
            "type": "object",
            "properties": {"order_id": {"type": "string", "pattern": "^[0-9]+$"}},
            "required": ["order_id"],
        },
        timeout_seconds=kwargs.pop("timeout_seconds", 2.0),
        auth_header="X-Tool-Token",
        auth_secret="s3cret-token",
        **kwargs,
    )


def test_http_tool_sends_arguments_and_the_auth_header(endpoint) -> None:
    row = _http_tool(endpoint, "/orders")
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT auth_secret FROM {HttpTool._meta.db_table} WHERE id = %s",  # noqa: S608
            [row.pk],
        )
        stored = cursor.fetchone()[0]
    assert stored and "s3cret-token" not in stored  # encrypted at rest
    result = tool_invoke(
        tool=_one("order_status"), arguments={"order_id": "42"}, context=CTX
    )
    assert result.ok, result.error
    assert json.loads(result.content) == {
        "order": {"order_id": "42"},
        "status": "shipped",
    }
    ((method, path, headers, body),) = endpoint.seen
    assert (method, path, body) == ("POST", "/orders", {"order_id": "42"})
    assert headers["x-tool-token"] == "s3cret-token"


def test_http_tool_invalid_arguments_send_no_request(endpoint) -> None:
    _http_tool(endpoint, "/orders")
    result = tool_invoke(
        tool=_one("order_status"), arguments={"order_id": "DROP TABLE"}, context=CTX
    )
    assert not result.ok and "does not match" in result.error
    assert endpoint.seen == []


def test_http_tool_timeout_is_honoured(endpoint) -> None:
    _http_tool(endpoint, "/slow", timeout_seconds=0.4)
    started = time.monotonic()
    result = tool_invoke(
        tool=_one("order_status"), arguments={"order_id": "1"}, context=CTX
    )
    assert time.monotonic() - started < 3  # not the 5 s the endpoint takes
    assert not result.ok and "timed out after 0.4s" in result.error


def test_http_tool_error_status_is_an_error_result(endpoint) -> None:
    _http_tool(endpoint, "/broken")
    result = tool_invoke(
        tool=_one("order_status"), arguments={"order_id": "1"}, context=CTX
    )
    assert not result.ok
    assert result.error.startswith("HTTP 503: ")
    assert "s3cret-token" not in result.content


def test_disabled_http_tool_is_not_offered(endpoint) -> None:
    _http_tool(endpoint, "/orders", enabled=False)
    assert tools_resolve(names=["order_status"]) == []


def test_http_tool_admin_validation(endpoint) -> None:
    bad = HttpTool(
        name="current_time",
        description="clash",
        url="http://127.0.0.1/x",
        parameters={"type": "object", "properties": {"a": {"type": "nope"}}},
    )
    with pytest.raises(ValidationError) as info:
        bad.full_clean()
    assert set(info.value.message_dict) == {"name", "parameters"}


def test_http_tool_admin_keeps_the_secret_write_only(admin_client) -> None:
    form = {
        "name": "crm_lookup",
        "description": "Find a customer",
        "enabled": "on",
        "method": "GET",
        "url": "http://127.0.0.1:9/crm",
        "parameters": '{"type": "object", "properties": {}}',
        "timeout_seconds": "3",
        "auth_header": "Authorization",
        "auth_secret": "Bearer top-secret",
    }
    response = admin_client.post("/admin/conversations/httptool/add/", form)
    assert response.status_code == 302, response.content[:2000]
    row = HttpTool.objects.get(name="crm_lookup")
    assert row.auth_secret == "Bearer top-secret"
    page = admin_client.get(f"/admin/conversations/httptool/{row.pk}/change/")
    assert page.status_code == 200 and b"top-secret" not in page.content
    # Saving without typing the secret again keeps it.
    form.update(auth_secret="", description="Find a customer by phone")
    response = admin_client.post(
        f"/admin/conversations/httptool/{row.pk}/change/", form
    )
    assert response.status_code == 302
    row.refresh_from_db()
    assert row.auth_secret == "Bearer top-secret"
    assert row.description == "Find a customer by phone"
    # A broken schema is a form error, not a 500.
    form.update(parameters='{"type": "string"}')
    response = admin_client.post(
        f"/admin/conversations/httptool/{row.pk}/change/", form
    )
    assert response.status_code == 200 and b"object schema" in response.content


def test_knowledge_entry_admin_lists_entries(admin_client, two_tenants) -> None:
    page = admin_client.get("/admin/conversations/knowledgeentry/?q=deliver")
    assert page.status_code == 200
    assert b"Do you deliver?" in page.content
    assert b"opening hours" not in page.content
