"""Assign a topic from the keyword taxonomy in ``settings.VOC_TOPICS``.

The taxonomy is ``{"topic": ["keyword", ...]}``; the topic whose keywords
occur most often in the text wins (ties: the first in the taxonomy). Keywords
match whole words, case-insensitively.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import lru_cache

from django.conf import settings


@lru_cache(maxsize=8)
def _compile(taxonomy_json: str) -> tuple[tuple[str, re.Pattern[str]], ...]:
    taxonomy = json.loads(taxonomy_json)
    compiled = []
    for topic, keywords in taxonomy.items():
        words = [re.escape(k.lower()) for k in keywords if k and k.strip()]
        if words:
            compiled.append((topic, re.compile(r"\b(?:" + "|".join(words) + r")\b")))
    return tuple(compiled)


def topic_matcher() -> Callable[[str], str | None]:
    """Return a function mapping text to its topic under the current taxonomy."""
    patterns = _compile(json.dumps(settings.VOC_TOPICS))

    def match(text: str) -> str | None:
        if not text:
            return None
        lowered = text.lower()
        best, best_hits = None, 0
        for topic, pattern in patterns:
            hits = len(pattern.findall(lowered))
            if hits > best_hits:
                best, best_hits = topic, hits
        return best

    return match


def topic_for(text: str) -> str | None:
    """Return the best-matching topic of ``text``, or None when none matches."""
    return topic_matcher()(text)
