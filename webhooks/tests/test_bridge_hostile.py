"""Hostile Pub/Sub messages through the bridge's decode → route → dead-letter path.

Each message that can never succeed must come out DEAD_LETTERED (acked): a
DeadLetter row with the reason, the message published to the dead-letter topic
of the (in-repository) Pub/Sub emulator, the dedup claim marked dead, and no
message, conversation, run or event written. Never an exception, never a nack
that would bring the same poison back forever.
"""

from __future__ import annotations

import copy
import itertools
import json
import threading

import pytest
from django.conf import settings as django_settings
from hypothesis import given
from hypothesis import strategies as st

from analytics.models import VocEvent
from conversations.models import Conversation, Message
from pipeline.models import Run
from vocoeng import pubsub
from vocoeng.models import DeadLetter, ProcessedMessage
from webhooks.bridge.batching import batch_handle
from webhooks.bridge.handling import Delivery, Outcome, message_handle
from webhooks.tests.test_bridge import pull
from webhooks.tests.test_hostile import (
    FUZZ,
    chat,
    every_wrong_type,
    invalid_utf8,
    nested,
    unknown_fields,
    wrong_type_at_some_field,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

KINDS = ["chat_message", "pipeline_job", "voc_event"]
_ids = itertools.count()


@pytest.fixture
def dead_letter_topic(pubsub_settings, queued) -> str:
    """The emulator's dead-letter topic, with a subscription to read it back."""
    topic = django_settings.PUBSUB_TOPIC_DEAD_LETTER
    pubsub.topic_ensure(topic)
    pubsub.subscription_ensure(
        pubsub.SubscriptionSpec(name=f"{topic}-check", topic=topic, dead_letter=False)
    )
    return f"{topic}-check"


def rows() -> tuple[int, ...]:
    return tuple(
        model.objects.count() for model in (Message, Conversation, Run, VocEvent)
    )


def delivery(data: bytes, **attributes: str) -> Delivery:
    return Delivery(
        subscription="projects/p/subscriptions/hostile",
        message_id=f"hostile-{next(_ids)}",
        data=data,
        attributes=attributes,
        delivery_attempt=1,
    )


def handle(d: Delivery) -> Outcome:
    return message_handle(d, retry_seconds=1, stop=threading.Event())


def assert_dead_lettered(d: Delivery, outcome: Outcome, before: tuple) -> str:
    assert outcome == Outcome.DEAD_LETTERED
    letter = DeadLetter.objects.get(message_id=d.message_id)
    assert letter.reason
    assert bytes(letter.data) == d.data
    claim = ProcessedMessage.objects.get(key=d.key)
    assert claim.state == ProcessedMessage.State.DEAD
    assert rows() == before  # nothing half-written
    return letter.reason


undecodable = st.one_of(
    invalid_utf8(json.dumps(chat()).encode()),
    st.sampled_from(
        [nested(d, k) for d in (1_000, 10_000, 100_000) for k in ("array", "object")]
    ),
    st.binary(max_size=64).filter(lambda b: not _is_json(b)),
)


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except (ValueError, RecursionError):
        return False
    return True


@FUZZ
@given(data=undecodable, kind=st.sampled_from(KINDS))
def test_undecodable_data_is_dead_lettered_with_the_reason(
    dead_letter_topic, data: bytes, kind: str
) -> None:
    before = rows()
    d = delivery(data, kind=kind)
    assert_dead_lettered(d, handle(d), before)


@pytest.mark.parametrize("depth", [10_000, 100_000])
def test_deep_nesting_is_dead_lettered_and_published_with_its_reason(
    dead_letter_topic, depth: int
) -> None:
    d = delivery(nested(depth, "array"), kind="chat_message")
    before = rows()
    reason = assert_dead_lettered(d, handle(d), before)
    assert reason == "body is not JSON: nested too deeply"
    published = [
        m
        for m in pull(dead_letter_topic)
        if m.attributes.get("dead_letter_message_id") == d.message_id
    ]
    assert len(published) == 1
    assert published[0].attributes["dead_letter_reason"] == reason
    assert published[0].data == d.data


@FUZZ
@given(doc=wrong_type_at_some_field(chat(), top_level=True))
def test_chat_message_with_a_wrong_type_is_dead_lettered(dead_letter_topic, doc):
    d = delivery(json.dumps(doc).encode(), kind="chat_message")
    before = rows()
    reason = assert_dead_lettered(d, handle(d), before)
    wrong = next(k for k in chat() if doc.get(k, chat()[k]) != chat()[k])
    assert wrong in reason or "JSON object" in reason, (wrong, reason)


def test_chat_message_every_field_with_every_wrong_type_is_dead_lettered(
    dead_letter_topic,
) -> None:
    for doc in every_wrong_type(chat(), top_level=True):
        d = delivery(json.dumps(doc).encode(), kind="chat_message")
        before = rows()
        assert_dead_lettered(d, handle(d), before)


@FUZZ
@given(
    doc=st.one_of(
        st.fixed_dictionaries({"idea": st.integers() | st.lists(st.text())}),
        st.fixed_dictionaries({"run_id": st.integers() | st.text(max_size=10)}),
        st.lists(st.integers(), max_size=3),
    )
)
def test_pipeline_job_with_wrong_types_is_dead_lettered(dead_letter_topic, doc):
    d = delivery(json.dumps(doc).encode(), kind="pipeline_job")
    before = rows()
    assert_dead_lettered(d, handle(d), before)


@FUZZ
@given(kind=st.text(min_size=1, max_size=300).filter(lambda k: k not in KINDS))
def test_unknown_kind_of_any_length_is_dead_lettered(dead_letter_topic, kind):
    d = delivery(json.dumps(chat()).encode(), kind=kind)
    before = rows()
    reason = assert_dead_lettered(d, handle(d), before)
    assert "unknown message kind" in reason


@FUZZ
@given(doc=unknown_fields(chat()))
def test_unknown_fields_are_ignored_and_the_message_stored_once(
    dead_letter_topic, doc
) -> None:
    doc = copy.deepcopy(doc)
    doc["message_id"] = f"unknown-fields-{next(_ids)}"
    d = delivery(json.dumps(doc).encode(), kind="chat_message")
    assert handle(d) == Outcome.ENQUEUED
    assert Message.objects.get(external_id=doc["message_id"]).content == "hello"
    assert not DeadLetter.objects.filter(message_id=d.message_id).exists()


def test_nul_in_a_message_is_stored_as_a_replacement_character(
    dead_letter_topic,
) -> None:
    doc = {**chat(), "message_id": "nul-1", "metadata": {"note\u0000": "a\u0000b"}}
    d = delivery(json.dumps(doc).encode(), kind="chat_message")
    assert handle(d) == Outcome.ENQUEUED
    stored = Message.objects.get(external_id="nul-1")
    assert stored.metadata["note\ufffd"] == "a\ufffdb"


def test_a_batch_dead_letters_the_hostile_and_enqueues_the_rest(
    dead_letter_topic,
) -> None:
    good = {**chat(), "message_id": "batch-good"}
    batch = [
        delivery(json.dumps(good).encode(), kind="chat_message"),
        delivery(nested(100_000, "array"), kind="chat_message"),
        delivery(b'{"message": "\xff"}', kind="chat_message"),
        delivery(
            json.dumps({**chat(), "user_id": ["x"]}).encode(), kind="chat_message"
        ),
    ]
    results = batch_handle(batch, retry_seconds=1, stop=threading.Event())
    assert [outcome for outcome, _ in results] == [
        Outcome.ENQUEUED,
        Outcome.DEAD_LETTERED,
        Outcome.DEAD_LETTERED,
        Outcome.DEAD_LETTERED,
    ]
    reasons = dict(DeadLetter.objects.values_list("message_id", "reason"))
    assert reasons[batch[1].message_id] == "body is not JSON: nested too deeply"
    assert "not UTF-8" in reasons[batch[2].message_id]
    assert "user_id" in reasons[batch[3].message_id]
    assert Message.objects.filter(external_id="batch-good").count() == 1


@pytest.mark.parametrize(
    "attributes",
    [
        {"kind": "k" * 1000},
        {"kind": "chat_message", "idempotency_key": "i" * 1000},
        {"kind": "chat\u0000message"},
        {"kind": "chat_message", "idempotency_key": "nul\u0000key"},
    ],
)
def test_attributes_that_do_not_fit_their_columns_are_handled(
    dead_letter_topic, attributes: dict[str, str]
) -> None:
    # Pub/Sub allows 1024-byte attribute values (NUL included); the columns
    # are shorter, and PostgreSQL stores no NUL.
    d = delivery(
        json.dumps({**chat(), "message_id": "long-attrs"}).encode(), **attributes
    )
    before = rows()
    outcome = handle(d)
    if attributes["kind"] in KINDS:
        assert outcome == Outcome.ENQUEUED
        assert handle(d) == Outcome.DUPLICATE  # the long key still dedups
    else:
        assert_dead_lettered(d, outcome, before)


@pytest.mark.parametrize(
    "given",
    ["two words", "line\nbreak", "x" * 129, "", "-leading-dash", "caf\u00e9"],
)
def test_a_malformed_correlation_id_attribute_is_replaced_by_the_message_id(
    given: str,
) -> None:
    # As the push endpoint does: the id goes into log lines and task headers.
    d = delivery(b"{}", kind="chat_message", correlation_id=given)
    assert d.correlation_id == f"pubsub-{d.message_id}"


def test_a_well_formed_correlation_id_attribute_is_kept() -> None:
    d = delivery(b"{}", kind="chat_message", correlation_id="req-42.a:b_c")
    assert d.correlation_id == "req-42.a:b_c"
