"""The Firestore conversation store, with the real client on the emulator."""

from __future__ import annotations

import json

import pytest
from google.cloud import firestore

from conversations.models import Message
from conversations.stores import get_store

pytestmark = [pytest.mark.django_db, pytest.mark.timeout(300)]
PROJECT = "vocoeng-test"


@pytest.fixture
def fs(firestore_emulator, settings, monkeypatch) -> firestore.Client:
    firestore_emulator.reset(PROJECT)
    settings.CONVERSATION_STORE = "firestore"
    settings.FIRESTORE_EMULATOR_HOST = firestore_emulator.host
    settings.FIRESTORE_PROJECT_ID = PROJECT
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", firestore_emulator.host)
    from conversations import stores

    stores._stores.pop("firestore", None)  # a client for this emulator
    return firestore.Client(project=PROJECT)


def post(client, **body):
    return client.post("/process", json.dumps(body), content_type="application/json")


def test_exchanges_are_stored_in_the_earlier_workers_schema(client, fs) -> None:
    first = post(
        client, user_id="15550001", message="My order is late", message_id="f1"
    )
    assert first.status_code == 200
    post(client, user_id="15550001", message="Any news?", message_id="f2")

    conv = fs.collection("conversations").document("15550001").get()
    assert conv.exists
    data = conv.to_dict()
    assert data["message_count"] == 4
    assert data["last_message"] == "Any news?"
    assert "Any news?" in data["last_response"]
    assert data["last_activity"] is not None

    docs = list(
        fs.collection("conversations")
        .document("15550001")
        .collection("messages")
        .order_by("timestamp")
        .stream()
    )
    assert [d.id for d in docs] == [first.json()["message_id"], docs[1].id]
    doc = docs[0].to_dict()
    assert doc["source"] == "api"
    assert doc["user_id"] == "15550001"
    assert doc["message"] == "My order is late"
    assert doc["response"] == first.json()["ai_response"]["response"]
    assert doc["model"] == "echo"
    assert set(doc["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert doc["processing_time_ms"] >= 0
    assert doc["metadata"]["external_message_id"] == "f1"


def test_history_is_read_from_firestore(client, fs) -> None:
    post(client, user_id="u9", message="one", message_id="g1")
    # Remove the database copy: the history must come from Firestore alone.
    Message.objects.filter(external_id="g1").update(content="(gone from db)")
    second = post(client, user_id="u9", message="two", message_id="g2").json()
    assert "[history: 1 earlier message(s)]" in second["ai_response"]["response"]
    inbound = Message.objects.get(external_id="g2")
    turns = get_store().history(inbound=inbound, limit=20)
    assert [t.role for t in turns][:2] == ["user", "assistant"]
    assert turns[0].content == "one"


def test_recording_an_exchange_twice_counts_it_once(client, fs) -> None:
    post(client, user_id="u7", message="hello", message_id="r1")
    inbound = Message.objects.get(external_id="r1")
    get_store().record_exchange(inbound=inbound, reply=inbound.reply)
    data = fs.collection("conversations").document("u7").get().to_dict()
    assert data["message_count"] == 2
    messages = fs.collection("conversations").document("u7").collection("messages")
    assert len(list(messages.stream())) == 1


def test_history_limit_keeps_the_newest_turns(client, fs, settings) -> None:
    for i in range(5):
        post(client, user_id="u8", message=f"m{i}", message_id=f"l{i}")
    inbound = Message.objects.get(external_id="l4")
    turns = get_store().history(inbound=inbound, limit=4)
    assert [t.content for t in turns if t.role == "user"] == ["m2", "m3"]
    assert turns[-1].role == "assistant"
