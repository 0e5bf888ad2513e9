"""Check the Firestore emulator harness against what the conversation store needs.

The schema mirrors the worker's conversation store: ``conversations/{user_id}``
with last_activity, message_count, last_message and last_response, and a
``messages/{message_id}`` subcollection. Everything runs against the real
google-cloud-firestore client pointed at the emulator.
"""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from vocoeng.testing import firestore_emulator as fe
from vocoeng.testing.firestore_emulator import (
    EmulatorError,
    EmulatorUnavailable,
    FirestoreEmulator,
)

# Generous so that the first run's npm install (a few seconds) fits; a warm
# run of the whole file takes a few seconds.
pytestmark = pytest.mark.timeout(300)

PROJECT = "test-project"
UTC = dt.UTC
T0 = dt.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture(scope="session")
def emulator() -> Iterator[FirestoreEmulator]:
    """Start one emulator for the session; skip if Node/npm are unavailable."""
    try:
        emu = FirestoreEmulator().start()
    except EmulatorUnavailable as exc:
        pytest.skip(exc.reason)
    yield emu
    emu.stop()


@pytest.fixture
def db(
    emulator: FirestoreEmulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[firestore.Client]:
    """Return a client on an emptied emulator, as the store would build it."""
    emulator.reset(PROJECT)
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", emulator.host)
    client = firestore.Client(project=PROJECT)
    yield client
    client.close()


def message_doc(
    i: int, *, user_id: str = "u1", source: str = "whatsapp"
) -> dict[str, Any]:
    """Build message ``i`` as the worker stores it, ``i`` minutes after T0."""
    return {
        "source": source,
        "user_id": user_id,
        "message": f"question {i}",
        "response": f"answer {i}",
        "timestamp": T0 + dt.timedelta(minutes=i),
        "model": "gpt-4o-mini",
        "usage": {
            "prompt_tokens": 10 * i,
            "completion_tokens": 5 * i,
            "total_tokens": 15 * i,
        },
        "processing_time_ms": 100 + i,
        "metadata": {"channel": {"phone": "+15550000"}, "tags": ["a", "b"]},
    }


def conversation_update(i: int) -> dict[str, Any]:
    """Build the conversation upsert the worker writes after message ``i``."""
    return {
        "last_activity": firestore.SERVER_TIMESTAMP,
        "message_count": firestore.Increment(1),
        "last_message": f"question {i}",
        "last_response": f"answer {i}",
    }


def assert_recent(value: object) -> None:
    """Assert ``value`` is a timezone-aware datetime within a minute of now."""
    assert isinstance(value, dt.datetime)
    assert value.tzinfo is not None
    assert abs(value - dt.datetime.now(UTC)) < dt.timedelta(minutes=1)


def test_emulator_reports_host_and_starts_quickly(emulator: FirestoreEmulator) -> None:
    host, _, port = emulator.host.partition(":")
    assert host == "127.0.0.1"
    assert int(port) == emulator.port
    assert emulator.env == {"FIRESTORE_EMULATOR_HOST": emulator.host}
    assert emulator.running
    assert emulator.startup_seconds is not None
    assert emulator.startup_seconds < 30


def test_set_and_get_message_round_trips_all_fields(db: firestore.Client) -> None:
    ref = db.collection("conversations").document("u1")
    ref.collection("messages").document("m1").set(message_doc(1))

    snap = ref.collection("messages").document("m1").get()

    assert snap.exists
    assert snap.id == "m1"
    assert snap.to_dict() == message_doc(1)
    assert snap.get("timestamp") == T0 + dt.timedelta(minutes=1)  # microseconds kept
    assert snap.get("usage.total_tokens") == 15
    assert not ref.get().exists  # a subcollection does not create its parent
    assert not ref.collection("messages").document("nope").get().exists


def test_conversation_upsert_increments_and_stamps_server_time(
    db: firestore.Client,
) -> None:
    ref = db.collection("conversations").document("u1")

    ref.set(conversation_update(1), merge=True)  # creates the document
    first = ref.get()
    ref.update(conversation_update(2))
    second = ref.get()

    assert first.get("message_count") == 1
    assert second.get("message_count") == 2
    assert type(second.get("message_count")) is int
    assert_recent(first.get("last_activity"))
    assert second.get("last_activity") >= first.get("last_activity")
    assert second.get("last_message") == "question 2"
    assert second.get("last_response") == "answer 2"
    assert second.update_time >= first.update_time


def test_update_of_missing_document_raises_not_found(db: firestore.Client) -> None:
    with pytest.raises(gexc.NotFound):
        db.collection("conversations").document("ghost").update(conversation_update(1))


def test_newest_messages_come_back_in_descending_order(db: firestore.Client) -> None:
    messages = db.collection("conversations").document("u1").collection("messages")
    for i in [3, 0, 4, 1, 2]:
        messages.document(f"m{i}").set(message_doc(i))
    db.collection("conversations").document("u2").collection("messages").document(
        "other"
    ).set(message_doc(9, user_id="u2"))

    newest = (
        messages.order_by("timestamp", direction=firestore.Query.DESCENDING)
        .limit(3)
        .stream()
    )
    oldest_first = messages.order_by("timestamp").stream()

    assert [s.id for s in newest] == ["m4", "m3", "m2"]
    assert [s.id for s in oldest_first] == ["m0", "m1", "m2", "m3", "m4"]


def test_where_field_filter_with_order_and_limit(db: firestore.Client) -> None:
    messages = db.collection("conversations").document("u1").collection("messages")
    for i in range(6):
        source = "whatsapp" if i % 2 else "web"
        messages.document(f"m{i}").set(message_doc(i, source=source))

    whatsapp = messages.where(filter=FieldFilter("source", "==", "whatsapp"))
    latest_whatsapp = whatsapp.order_by(
        "timestamp", direction=firestore.Query.DESCENDING
    ).limit(2)
    since = messages.where(filter=FieldFilter("timestamp", ">=", T0.replace(minute=3)))
    big = messages.where(filter=FieldFilter("usage.total_tokens", ">", 50))

    assert sorted(s.id for s in whatsapp.stream()) == ["m1", "m3", "m5"]
    assert [s.id for s in latest_whatsapp.stream()] == ["m5", "m3"]
    assert sorted(s.id for s in since.stream()) == ["m3", "m4", "m5"]
    assert sorted(s.id for s in big.stream()) == ["m4", "m5"]
    assert whatsapp.count().get()[0][0].value == 3


def test_write_batch_writes_message_and_conversation(db: firestore.Client) -> None:
    conv = db.collection("conversations").document("u1")
    batch = db.batch()
    batch.create(conv.collection("messages").document("m1"), message_doc(1))
    batch.set(conv, conversation_update(1), merge=True)

    results = batch.commit()

    assert len(results) == 2
    assert conv.collection("messages").document("m1").get().exists
    assert conv.get().get("message_count") == 1


def test_create_on_existing_document_raises_already_exists(
    db: firestore.Client,
) -> None:
    ref = db.collection("conversations").document("u1").collection("messages")
    ref.document("m1").create(message_doc(1))

    with pytest.raises(gexc.AlreadyExists):
        ref.document("m1").create(message_doc(2))

    assert ref.document("m1").get().get("message") == "question 1"


def test_failed_batch_applies_none_of_its_writes(db: firestore.Client) -> None:
    """Check idempotency keyed on message_id: a redelivery changes nothing."""
    conv = db.collection("conversations").document("u1")
    message = conv.collection("messages").document("m1")

    def record(i: int) -> None:
        batch = db.batch()
        batch.set(conv, conversation_update(i), merge=True)
        batch.create(message, message_doc(i))
        batch.commit()

    record(1)
    with pytest.raises(gexc.AlreadyExists):
        record(2)

    assert conv.get().get("message_count") == 1
    assert conv.get().get("last_message") == "question 1"
    assert message.get().get("message") == "question 1"


def test_transaction_get_then_create_is_idempotent(db: firestore.Client) -> None:
    conv = db.collection("conversations").document("u1")
    message = conv.collection("messages").document("m1")

    @firestore.transactional
    def record_once(tx: firestore.Transaction, i: int) -> bool:
        if message.get(transaction=tx).exists:
            return False
        tx.create(message, message_doc(i))
        tx.set(conv, conversation_update(i), merge=True)
        return True

    assert record_once(db.transaction(), 1) is True
    assert record_once(db.transaction(), 2) is False
    assert conv.get().get("message_count") == 1
    assert message.get().get("message") == "question 1"


def test_set_replaces_and_delete_field_removes(db: firestore.Client) -> None:
    ref = db.collection("conversations").document("u1")
    ref.set({"a": 1, "b": 2, "nested": {"x": 1, "y": 2}})

    ref.set({"c": 3, "nested": {"x": 1, "y": 2}})
    replaced = ref.get().to_dict()
    ref.update({"c": firestore.DELETE_FIELD, "nested.y": firestore.DELETE_FIELD})

    assert replaced == {"c": 3, "nested": {"x": 1, "y": 2}}
    assert ref.get().to_dict() == {"nested": {"x": 1}}


def test_reset_deletes_only_the_given_project(
    emulator: FirestoreEmulator, db: firestore.Client
) -> None:
    other = firestore.Client(project="other-project")
    db.collection("c").document("d").set({"v": 1})
    other.collection("c").document("d").set({"v": 2})

    emulator.reset(PROJECT)
    assert not db.collection("c").document("d").get().exists
    assert other.collection("c").document("d").get().exists

    emulator.reset()
    assert not other.collection("c").document("d").get().exists
    other.close()


def test_unpatched_package_drops_increment_after_server_timestamp(
    emulator: FirestoreEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Show why the launcher patches 0.3.15 (fails once upstream fixes it)."""
    with FirestoreEmulator(patch_known_bugs=False) as raw:
        monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", raw.host)
        client = firestore.Client(project=PROJECT)
        ref = client.collection("conversations").document("u1")
        ref.set(conversation_update(1), merge=True)
        snap = ref.get()
        client.close()

    assert_recent(snap.get("last_activity"))
    assert "message_count" not in snap.to_dict()


def test_start_failure_reports_the_emulator_stderr(
    emulator: FirestoreEmulator,
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(EmulatorError, match="EADDRINUSE"):
            FirestoreEmulator(port=port, startup_timeout=10).start()


def test_missing_node_raises_emulator_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fe.shutil, "which", lambda name: None)

    with pytest.raises(EmulatorUnavailable, match=r"Node\.js is not installed"):
        fe.ensure_installed(tmp_path)


def test_missing_npm_raises_emulator_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_which = fe.shutil.which
    monkeypatch.setattr(
        fe.shutil, "which", lambda name: None if name == "npm" else real_which(name)
    )
    if real_which("node") is None:
        pytest.skip("Node.js is not installed")

    with pytest.raises(EmulatorUnavailable, match="npm is not installed"):
        fe.ensure_installed(tmp_path)


def test_ensure_installed_is_idempotent(emulator: FirestoreEmulator) -> None:
    path = fe.ensure_installed()

    assert path == fe.DEFAULT_INSTALL_DIR == emulator.install_dir
    assert fe.installed_version(path) == fe.PACKAGE_VERSION
    assert (path / fe.LAUNCHER_NAME).is_file()
