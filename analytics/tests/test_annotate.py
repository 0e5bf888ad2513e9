from __future__ import annotations

import pytest

from analytics.sentiment import (
    sentiment_cache_clear,
    sentiment_cache_size,
    sentiment_score,
)
from analytics.topics import topic_for


def test_plainly_positive_sentence_scores_positive() -> None:
    assert sentiment_score("I love this service, the agent was wonderful!") > 0.5


def test_plainly_negative_sentence_scores_negative() -> None:
    assert sentiment_score("This is terrible, I hate it and I am furious.") < -0.5


def test_neutral_sentence_scores_near_zero() -> None:
    assert (
        abs(sentiment_score("The call started at nine and lasted ten minutes.")) < 0.05
    )


def test_no_text_has_no_sentiment() -> None:
    assert sentiment_score("") is None
    assert sentiment_score("   ") is None


def test_scores_are_cached_by_text() -> None:
    sentiment_cache_clear()
    first = sentiment_score("Great job, thank you")
    assert sentiment_cache_size() == 1
    assert sentiment_score("Great job, thank you") == first
    assert sentiment_cache_size() == 1
    sentiment_score("Awful job")
    assert sentiment_cache_size() == 2


def test_topic_comes_from_the_configured_taxonomy(
    settings: pytest.FixtureRequest,
) -> None:
    settings.VOC_TOPICS = {"billing": ["refund", "invoice"], "shipping": ["parcel"]}
    assert topic_for("Where is my parcel? Also I need a refund") in {
        "billing",
        "shipping",
    }
    assert topic_for("My INVOICE is wrong, I want a refund") == "billing"
    assert topic_for("the parcel never came") == "shipping"
    assert topic_for("hello") is None
    # Whole words only: "parcels" is not "parcel".
    assert topic_for("parcels") is None
    settings.VOC_TOPICS = {"parcels": ["parcels"]}
    assert topic_for("parcels") == "parcels"
