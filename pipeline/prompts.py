"""Hold every prompt of the consensus pipeline and the JSON each step must return.

Each user prompt starts with a ``TASK:`` line (and reviews with a ``PERSONA:``
line) so logs, the fake model server in tests and humans reading the ledger
can tell the steps apart.
"""

from __future__ import annotations

import json
from typing import Any

SYSTEM = (
    "You are part of a panel that evaluates product and business ideas. "
    "Answer with one JSON object only: no prose, no Markdown, no code fences."
)

EXPAND_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["title", "summary", "goals", "assumptions", "questions"],
    "properties": {
        "title": {"type": "string", "minLength": 1},
        "summary": {"type": "string", "minLength": 1},
        "goals": {"type": "array", "items": {"type": "string"}},
        "assumptions": {"type": "array", "items": {"type": "string"}},
        "questions": {"type": "array", "items": {"type": "string"}},
    },
}

VERDICTS = ["approve", "revise", "reject"]

REVIEW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["verdict", "score", "strengths", "risks"],
    "properties": {
        "verdict": {"enum": VERDICTS},
        "score": {"type": "integer", "minimum": 1, "maximum": 10},
        "strengths": {"type": "array", "items": {"type": "string"}},
        "risks": {"type": "array", "items": {"type": "string"}},
    },
}

AGGREGATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["verdict", "agreement", "key_points", "dissent"],
    "properties": {
        "verdict": {"enum": VERDICTS},
        "agreement": {"type": "number", "minimum": 0, "maximum": 1},
        "key_points": {"type": "array", "items": {"type": "string"}},
        "dissent": {"type": "array", "items": {"type": "string"}},
    },
}


def _shape(schema: dict[str, Any]) -> str:
    return json.dumps(schema["properties"], separators=(",", ":"))


def expand_prompt(*, idea: str) -> str:
    """Return the prompt that expands an idea into a structured brief."""
    return (
        "TASK: expand\n"
        "Expand the idea below into a structured brief. Reply with a JSON object "
        f"with exactly these keys (JSON Schema of each): {_shape(EXPAND_SCHEMA)}\n\n"
        f"IDEA:\n{idea}"
    )


def review_prompt(*, persona: str, brief: dict[str, Any]) -> str:
    """Return the prompt in which ``persona`` reviews the brief."""
    return (
        "TASK: review\n"
        f"PERSONA: {persona}\n"
        f"Review the brief below as the {persona} of the panel would. Reply with a "
        f"JSON object with exactly these keys: {_shape(REVIEW_SCHEMA)}\n\n"
        f"BRIEF:\n{json.dumps(brief, ensure_ascii=False)}"
    )


def aggregate_prompt(
    *, brief: dict[str, Any], reviews: dict[str, dict[str, Any]]
) -> str:
    """Return the prompt that merges the reviews into a consensus."""
    return (
        "TASK: aggregate\n"
        "Merge the panel's reviews into a consensus. agreement is 0..1 (1 = all "
        "reviewers agree); dissent lists the minority positions. Reply with a JSON "
        f"object with exactly these keys: {_shape(AGGREGATE_SCHEMA)}\n\n"
        f"BRIEF:\n{json.dumps(brief, ensure_ascii=False)}\n\n"
        f"REVIEWS:\n{json.dumps(reviews, ensure_ascii=False)}"
    )


def repair_prompt(*, problem: str) -> str:
    """Return the follow-up that asks once for a corrected JSON answer."""
    return (
        "TASK: repair\n"
        f"Your previous answer was not the JSON object asked for: {problem}. "
        "Reply again with only the corrected JSON object."
    )
