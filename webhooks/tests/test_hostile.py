"""Hostile input at the webhooks (and the JSON APIs): a clear 4xx, never a crash.

Property-based (hypothesis): wrong types at every field of a valid body,
unknown fields, invalid UTF-8, deep nesting, bodies over
DATA_UPLOAD_MAX_MEMORY_SIZE. Signed webhooks are signed correctly, so the
parsers behind the signature check are what is tested. Every answer is a 2xx
or a JSON 4xx, the delivery is recorded once with a verdict that says what
happened, and a rejected delivery writes no message or conversation.
"""

from __future__ import annotations

import base64
import copy
import json
from collections import Counter
from typing import Any

import pytest
from django.conf import settings as django_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conversations.models import Conversation, Message
from vocoeng.models import Tenant
from vocoeng.services import api_key_create
from webhooks.models import WebhookDelivery
from webhooks.tests import payloads

pytestmark = pytest.mark.django_db

AISENSY_SECRET = "aisensy-secret"  # webhooks/tests/conftest.py
FUZZ = settings(
    max_examples=40,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DEPTHS = [1_000, 10_000, 100_000]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


# --- helpers ---------------------------------------------------------------------


def snapshot() -> tuple[int, int, Counter]:
    verdicts = Counter(WebhookDelivery.objects.values_list("verdict", flat=True))
    return Message.objects.count(), Conversation.objects.count(), verdicts


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Return the path of every value in a JSON document (the root excluded)."""
    found = []
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else []
    )
    for key, value in items:
        found.append((*prefix, key))
        found.extend(paths(value, (*prefix, key)))
    return found


def replaced(doc: Any, path: tuple, value: Any) -> Any:
    out = copy.deepcopy(doc)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def get(doc: Any, path: tuple) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


@st.composite
def wrong_type_at_some_field(draw, doc: Any, *, top_level: bool = False) -> Any:
    """Return ``doc`` with one value replaced by one of another type.

    ``top_level``: only the document's own fields (below them, e.g. in a chat
    message's free-form ``metadata``, any type may be valid).
    """
    where = [p for p in paths(doc) if len(p) == 1 or not top_level]
    path = draw(st.sampled_from(where))
    original = type_of(get(doc, path))
    value = draw(json_values.filter(lambda v: type_of(v) != original))
    return replaced(doc, path, value)


# One value of each JSON type, for the exhaustive sweeps below.
WRONG_VALUES = [None, True, 0, 1.5, "", "x", [], [1], {}, {"a": 1}]


def every_wrong_type(doc: Any, *, top_level: bool = False) -> list[Any]:
    """Return ``doc`` once per (field, value of another type), every field."""
    return [
        replaced(doc, path, value)
        for path in paths(doc)
        if len(path) == 1 or not top_level
        for value in WRONG_VALUES
        if type_of(value) != type_of(get(doc, path))
    ]


@st.composite
def unknown_fields(draw, doc: Any) -> Any:
    """Return ``doc`` with extra keys added to some of its objects."""
    out = copy.deepcopy(doc)
    objects = [()] + [p for p in paths(doc) if isinstance(get(doc, p), dict)]
    for path in draw(st.lists(st.sampled_from(objects), min_size=1, max_size=4)):
        node = get(out, path)
        name = draw(
            st.text(min_size=1, max_size=10).filter(lambda k, n=node: k not in n)
        )
        node[name] = draw(json_values)
    return out


@st.composite
def invalid_utf8(draw, raw: bytes) -> bytes:
    """Return ``raw`` with a byte sequence that is not UTF-8 spliced in."""
    bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"]))
    at = draw(st.integers(0, len(raw)))
    return raw[:at] + bad + raw[at:]


def nested(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def assert_rejected_cleanly(response, before: tuple, *, status: int = 400) -> dict:
    """A JSON 4xx, one delivery recorded as rejected, nothing else written."""
    messages, conversations, verdicts = before
    assert response.status_code == status, response.content[:300]
    body = response.json()
    assert body["error"]
    after = snapshot()
    assert after[:2] == (messages, conversations)
    assert after[2] - verdicts == Counter({WebhookDelivery.Verdict.REJECTED: 1})
    return body


def assert_recorded_once(response, before: tuple) -> None:
    """2xx or a JSON 400; exactly one delivery recorded with a final verdict."""
    messages, conversations, verdicts = before
    assert response.status_code in (200, 400), response.content[:300]
    assert response["Content-Type"] == "application/json"
    after = snapshot()
    new = after[2] - verdicts
    assert sum(new.values()) == 1, new
    (verdict,) = new
    rejected = response.status_code == 400 or (
        # Pub/Sub push: a message that can never succeed is acked (2xx).
        response.json().get("outcome") == "rejected"
    )
    if rejected:
        assert response.json().get("error") or response.json().get("reason")
        assert verdict == WebhookDelivery.Verdict.REJECTED
        assert after[:2] == (messages, conversations)  # no partial write
    else:
        assert verdict in (
            WebhookDelivery.Verdict.PROCESSED,
            WebhookDelivery.Verdict.IGNORED,
        )
        # The body holds one message from one user: at most one of each.
        assert after[0] - messages <= 1
        assert after[1] - conversations <= 1


# --- WhatsApp ----------------------------------------------------------------------


def whatsapp_body() -> dict[str, Any]:
    return payloads.notification(
        [payloads.text("15551230000", "hello there", id="wamid.FUZZ")],
        [payloads.status("wamid.SENT", "delivered", "15551230000")],
    )


def post_signed(client, raw: bytes):
    _, signature = payloads.signed(raw)
    return client.post(
        "/webhooks/whatsapp/",
        data=raw,
        content_type="application/json",
        HTTP_X_HUB_SIGNATURE_256=signature,
    )


@FUZZ
@given(doc=wrong_type_at_some_field(whatsapp_body()))
def test_whatsapp_wrong_type_at_any_field_is_200_or_400_never_a_crash(
    client, doc
) -> None:
    before = snapshot()
    response = post_signed(client, json.dumps(doc).encode())
    assert_recorded_once(response, before)


def test_whatsapp_every_field_with_every_wrong_type_is_200_or_400(client) -> None:
    docs = every_wrong_type(whatsapp_body())
    assert len(docs) > 200  # every field of the body, not a sample
    for doc in docs:
        Message.objects.filter(external_id="wamid.FUZZ").delete()
        before = snapshot()
        response = post_signed(client, json.dumps(doc).encode())
        assert_recorded_once(response, before)


@FUZZ
@given(doc=unknown_fields(whatsapp_body()))
def test_whatsapp_unknown_fields_are_ignored(client, doc) -> None:
    Message.objects.filter(external_id="wamid.FUZZ").delete()
    before = snapshot()
    response = post_signed(client, json.dumps(doc).encode())
    assert response.status_code == 200, response.content
    assert Message.objects.get(external_id="wamid.FUZZ").content == "hello there"
    assert snapshot()[2] - before[2] == Counter({"processed": 1})


@FUZZ
@given(raw=invalid_utf8(json.dumps(whatsapp_body()).encode()))
def test_whatsapp_body_not_utf8_is_rejected_and_recorded(client, raw) -> None:
    before = snapshot()
    body = assert_rejected_cleanly(post_signed(client, raw), before)
    assert "not UTF-8" in body["error"]
    stored = WebhookDelivery.objects.order_by("-received_at").first()
    assert "\ufffd" in stored.body  # kept for audit, bad bytes replaced


@pytest.mark.parametrize("kind", ["array", "object"])
@pytest.mark.parametrize("depth", DEPTHS)
def test_whatsapp_deep_nesting_is_rejected_and_recorded(
    client, depth: int, kind: str
) -> None:
    before = snapshot()
    body = assert_rejected_cleanly(post_signed(client, nested(depth, kind)), before)
    assert body["error"] in (
        "body is not JSON: nested too deeply",
        "body is not a JSON object",
        "object is None, not 'whatsapp_business_account'",
    )


# Python's json refuses an integer of over 4,300 digits with a plain ValueError
# (not a JSONDecodeError): it was a 500, before the signature was checked.
TOO_LONG = b"1" * 5_000


def test_whatsapp_number_too_long_is_rejected_and_recorded(client) -> None:
    raw = json.dumps(whatsapp_body()).encode()[:-1] + b', "n": ' + TOO_LONG + b"}"
    before = snapshot()
    body = assert_rejected_cleanly(post_signed(client, raw), before)
    assert body["error"] == "body is not JSON: a number too long"
    response = client.post(
        "/webhooks/whatsapp/",
        data=raw,
        content_type="application/json",
        HTTP_X_HUB_SIGNATURE_256="sha256=" + "0" * 64,
    )
    assert response.status_code == 403  # unsigned: refused, not a crash


# Python's json reads NaN, Infinity and 1e999 (as infinity); JSON has no such
# numbers and PostgreSQL's jsonb refuses them, so the worker failed on retry.
NOT_JSON_NUMBERS = [
    (b"NaN", "NaN is not a JSON number"),
    (b"-Infinity", "-Infinity is not a JSON number"),
    (b"1e999", "a number too large"),
    (b"-1.5e400", "a number too large"),
]


@pytest.mark.parametrize(("number", "reason"), NOT_JSON_NUMBERS)
def test_whatsapp_number_json_has_not_is_rejected_and_recorded(
    client, number: bytes, reason: str
) -> None:
    raw = json.dumps(whatsapp_body()).encode()[:-1] + b', "n": ' + number + b"}"
    before = snapshot()
    body = assert_rejected_cleanly(post_signed(client, raw), before)
    assert body["error"] == f"body is not JSON: {reason}"


@pytest.mark.parametrize(("number", "reason"), NOT_JSON_NUMBERS)
@pytest.mark.parametrize("path", ["/webhooks/api/", "/process"])
def test_a_number_json_has_not_is_a_json_400(
    client, api_auth, path: str, number: bytes, reason: str
) -> None:
    doc = json.dumps(chat()).encode()
    raw = doc[:-1] + b', "metadata": {"n": ' + number + b"}}"
    before = snapshot()
    response = client.post(path, data=raw, content_type="application/json", **api_auth)
    assert response.status_code == 400, response.content[:300]
    assert response.json()["error"] == f"body is not JSON: {reason}"
    assert snapshot()[:2] == before[:2]


def test_whatsapp_body_over_the_upload_limit_is_a_json_400(client) -> None:
    raw = json.dumps(
        {**whatsapp_body(), "pad": "x" * django_settings.DATA_UPLOAD_MAX_MEMORY_SIZE}
    ).encode()
    before = snapshot()
    response = post_signed(client, raw)
    assert response.status_code == 400
    assert response.json() == {"error": "request body too large"}
    assert snapshot() == before  # nothing read, nothing written


def test_whatsapp_nul_escapes_are_stored_as_replacement_characters(client) -> None:
    doc = payloads.notification(
        [payloads.text("15551230001", "a\u0000b", id="wamid.NUL\u0000")]
    )
    response = post_signed(client, json.dumps(doc).encode())
    assert response.status_code == 200, response.content
    message = Message.objects.get(external_id="wamid.NUL\ufffd")
    assert message.content == "a\ufffdb"


# --- AiSensy -----------------------------------------------------------------------


def aisensy_body() -> dict[str, Any]:
    return {
        "topic": "message.sender.user",
        "data": {
            "message": {
                "messageId": "aisensy-fuzz-1",
                "phone_number": "+91 98765 43210",
                "message_type": "TEXT",
                "message_content": {"text": "hi from aisensy"},
            }
        },
    }


def post_aisensy(client, raw: bytes):
    return client.post(
        "/webhooks/aisensy/",
        data=raw,
        content_type="application/json",
        HTTP_X_AISENSY_SECRET=AISENSY_SECRET,
    )


@FUZZ
@given(doc=wrong_type_at_some_field(aisensy_body()) | unknown_fields(aisensy_body()))
def test_aisensy_wrong_types_and_unknown_fields_never_crash(client, doc) -> None:
    Message.objects.filter(external_id="aisensy-fuzz-1").delete()
    before = snapshot()
    response = post_aisensy(client, json.dumps(doc).encode())
    assert_recorded_once(response, before)


def test_aisensy_every_field_with_every_wrong_type_is_200_or_400(client) -> None:
    for doc in every_wrong_type(aisensy_body()):
        Message.objects.filter(external_id="aisensy-fuzz-1").delete()
        before = snapshot()
        assert_recorded_once(post_aisensy(client, json.dumps(doc).encode()), before)


@pytest.mark.parametrize("depth", DEPTHS)
def test_aisensy_deep_nesting_and_bad_utf8_are_rejected(client, depth: int) -> None:
    before = snapshot()
    assert_rejected_cleanly(post_aisensy(client, nested(depth, "array")), before)
    before = snapshot()
    body = assert_rejected_cleanly(post_aisensy(client, b'{"topic": "\xff"}'), before)
    assert "not UTF-8" in body["error"]


# --- Pub/Sub push ------------------------------------------------------------------


def push(data: bytes, **attributes: str) -> dict[str, Any]:
    return {
        "message": {
            "data": base64.b64encode(data).decode(),
            "attributes": {"kind": "chat_message", **attributes},
            "messageId": "push-1",
        },
        "subscription": "projects/p/subscriptions/vocoeng-messages-push",
    }


def chat() -> dict[str, Any]:
    return {
        "source": "api",
        "user_id": "push-user",
        "message": "hello",
        "message_id": "push-ext-1",
        "timestamp": "2024-01-01T12:00:00Z",
        "metadata": {"received_at": "2024-01-01T12:00:00Z"},
    }


def post_push(client, raw: bytes):
    return client.post("/webhooks/pubsub/", data=raw, content_type="application/json")


@FUZZ
@given(doc=wrong_type_at_some_field(chat(), top_level=True))
def test_push_of_a_chat_message_with_a_wrong_type_is_a_recorded_rejection(
    client, doc
) -> None:
    before = snapshot()
    response = post_push(client, json.dumps(push(json.dumps(doc).encode())).encode())
    # Acked (2xx) so Pub/Sub stops redelivering, and recorded with the reason.
    assert response.status_code == 200, response.content
    assert response.json()["outcome"] == "rejected"
    assert response.json()["reason"]
    after = snapshot()
    assert after[:2] == before[:2]
    assert after[2] - before[2] == Counter({"rejected": 1})


@FUZZ
@given(
    data=st.one_of(
        invalid_utf8(json.dumps(chat()).encode()),
        st.sampled_from([nested(d, k) for d in DEPTHS for k in ("array", "object")]),
        st.binary(max_size=64),
    )
)
def test_push_of_undecodable_data_is_a_recorded_rejection(client, data) -> None:
    before = snapshot()
    response = post_push(client, json.dumps(push(data)).encode())
    assert response.status_code == 200, response.content
    assert response.json()["outcome"] == "rejected"
    assert snapshot()[2] - before[2] == Counter({"rejected": 1})
    assert snapshot()[:2] == before[:2]


@FUZZ
@given(envelope=wrong_type_at_some_field(push(json.dumps(chat()).encode())))
def test_push_envelope_with_a_wrong_type_never_crashes(client, envelope) -> None:
    Message.objects.filter(external_id="push-ext-1").delete()
    before = snapshot()
    response = post_push(client, json.dumps(envelope).encode())
    assert_recorded_once(response, before)


@pytest.mark.parametrize("depth", DEPTHS)
def test_push_envelope_nested_too_deeply_is_rejected(client, depth: int) -> None:
    before = snapshot()
    body = assert_rejected_cleanly(post_push(client, nested(depth, "array")), before)
    assert "nested too deeply" in body["error"] or "envelope" in body["error"]


# --- API source and the JSON APIs --------------------------------------------------


@pytest.fixture
def api_auth(db) -> dict[str, str]:
    tenant = Tenant.objects.create(slug="hostile", name="Hostile")
    return {"HTTP_AUTHORIZATION": f"Token {api_key_create(tenant=tenant)[1]}"}


def post_api(client, raw: bytes, auth: dict[str, str]):
    return client.post(
        "/webhooks/api/", data=raw, content_type="application/json", **auth
    )


@FUZZ
@given(doc=wrong_type_at_some_field(chat(), top_level=True))
def test_api_source_wrong_type_is_a_400_with_nothing_written(
    client, api_auth, doc
) -> None:
    before = snapshot()
    assert_rejected_cleanly(
        post_api(client, json.dumps(doc).encode(), api_auth), before
    )


def test_api_source_every_field_with_every_wrong_type_is_a_400(
    client, api_auth
) -> None:
    for doc in every_wrong_type(chat(), top_level=True):
        before = snapshot()
        response = post_api(client, json.dumps(doc).encode(), api_auth)
        assert_rejected_cleanly(response, before)


@FUZZ
@given(doc=unknown_fields(chat()))
def test_api_source_unknown_fields_are_ignored(client, api_auth, doc) -> None:
    Message.objects.filter(external_id="push-ext-1").delete()
    response = post_api(client, json.dumps(doc).encode(), api_auth)
    assert response.status_code == 202, response.content
    assert Message.objects.get(external_id="push-ext-1").content == "hello"


@FUZZ
@given(raw=invalid_utf8(json.dumps(chat()).encode()))
def test_api_source_body_not_utf8_is_a_400(client, api_auth, raw) -> None:
    before = snapshot()
    body = assert_rejected_cleanly(post_api(client, raw, api_auth), before)
    assert "not UTF-8" in body["error"]


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize(
    "path", ["/webhooks/api/", "/process", "/api/v1/runs/", "/api/v1/analytics/events/"]
)
def test_deep_nesting_is_a_400_on_every_json_endpoint(
    client, api_auth, path: str, depth: int
) -> None:
    before = snapshot()
    response = client.post(
        path, data=nested(depth, "array"), content_type="application/json", **api_auth
    )
    assert response.status_code == 400, response.content[:300]
    assert response.json()["error"]
    assert snapshot()[:2] == before[:2]


@pytest.mark.parametrize(
    "path", ["/webhooks/api/", "/process", "/api/v1/runs/", "/webhooks/pubsub/"]
)
def test_a_number_too_long_is_a_json_400(client, api_auth, path) -> None:
    raw = b'{"n": ' + TOO_LONG + b"}"
    before = snapshot()
    response = client.post(path, data=raw, content_type="application/json", **api_auth)
    assert response.status_code == 400, response.content[:300]
    assert response.json()["error" if path != "/api/v1/runs/" else "detail"]
    assert snapshot()[:2] == before[:2]


@pytest.mark.parametrize(
    "path", ["/webhooks/api/", "/process", "/api/v1/runs/", "/webhooks/pubsub/"]
)
def test_body_over_the_upload_limit_is_a_json_400(client, api_auth, path) -> None:
    raw = b'{"pad": "' + b"x" * django_settings.DATA_UPLOAD_MAX_MEMORY_SIZE + b'"}'
    before = snapshot()
    response = client.post(path, data=raw, content_type="application/json", **api_auth)
    assert response.status_code == 400
    assert response.json() == {"error": "request body too large"}
    assert snapshot() == before


def test_push_with_nul_in_attributes_is_a_recorded_rejection(client) -> None:
    envelope = push(json.dumps(chat()).encode(), tenant="no\u0000such")
    before = snapshot()
    response = post_push(client, json.dumps(envelope).encode())
    assert response.status_code == 200, response.content
    assert response.json()["outcome"] == "rejected"
    assert "unknown tenant" in response.json()["reason"]
    assert snapshot()[2] - before[2] == Counter({"rejected": 1})
