"""Find a tenant's FAQ entries for a question (the faq_lookup tool's read)."""

from __future__ import annotations

import re
from typing import Any

from django.db.models import Case, IntegerField, Q, Value, When

# Words too common to say anything about which entry fits.
_STOPWORDS = frozenset(
    "the and for are but not you your our can with what when where which who how "
    "does did has have had was were this that from into about there their them "
    "they its any all".split()
)
MAX_TERMS = 8


def query_terms(query: str) -> list[str]:
    """Return the distinct words of ``query`` worth matching, in order."""
    words = re.findall(r"\w+", query.lower())
    terms = [w for w in words if len(w) >= 3 and w not in _STOPWORDS]
    return list(dict.fromkeys(terms))[:MAX_TERMS]


def knowledge_search(
    *, tenant_id: int, query: str, limit: int = 3
) -> list[dict[str, Any]]:
    """Return the tenant's best-matching entries, best first.

    Ranked in the database: each query word found in an entry's keywords
    scores 3, in its question 2, in its answer 1; entries scoring 0 are left
    out. Only ``tenant_id``'s enabled entries are ever read.
    """
    from ..models import KnowledgeEntry

    terms = query_terms(query)
    if not terms:
        return []
    score: Any = Value(0)
    match = Q()
    for term in terms:
        for field, weight in (("keywords", 3), ("question", 2), ("answer", 1)):
            lookup = Q(**{f"{field}__icontains": term})
            match |= lookup
            score = score + Case(
                When(lookup, then=Value(weight)),
                default=Value(0),
                output_field=IntegerField(),
            )
    rows = (
        KnowledgeEntry.objects.filter(tenant_id=tenant_id, enabled=True)
        .filter(match)
        .annotate(score=score)
        .order_by("-score", "pk")
        .values("question", "answer", "score")[:limit]
    )
    return list(rows)
