"""Score text sentiment with VADER (vaderSentiment ships its lexicon offline).

Scores are VADER's ``compound`` in [-1, 1], cached by the SHA-256 of the text:
transcripts repeat (templates, IVR prompts, retries of the same event) and
VADER costs far more than a hash.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from functools import cache

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

CACHE_SIZE = 50_000

_lock = threading.Lock()
_cache: OrderedDict[bytes, float] = OrderedDict()


@cache
def _analyzer() -> SentimentIntensityAnalyzer:
    # Loads the lexicon once per process (about 10 ms), on first use.
    return SentimentIntensityAnalyzer()


def sentiment_score(text: str) -> float | None:
    """Return the compound sentiment of ``text`` in [-1, 1]; None for no text."""
    if not text or not text.strip():
        return None
    key = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    with _lock:
        score = _cache.get(key)
        if score is not None:
            _cache.move_to_end(key)
            return score
    score = float(_analyzer().polarity_scores(text)["compound"])
    with _lock:
        _cache[key] = score
        if len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return score


def sentiment_cache_clear() -> None:
    """Empty the score cache (tests and benchmarks)."""
    with _lock:
        _cache.clear()


def sentiment_cache_size() -> int:
    """Return how many scores are cached."""
    return len(_cache)
