"""Answer offline, with no account: the embedded default provider."""

from __future__ import annotations

import json
from typing import Any

from .base import ChatTurn, RawCompletion


def offline_instance(schema: dict[str, Any], name: str = "answer") -> Any:
    """Return a value valid against ``schema`` (the subset the pipeline uses).

    Strings say they come from the offline provider; numbers sit in their
    range; an enum takes its first value; arrays hold one item.
    """
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {
            key: offline_instance(sub, key)
            for key, sub in schema.get("properties", {}).items()
        }
    if kind == "array":
        return [offline_instance(schema.get("items", {"type": "string"}), name)]
    if kind in ("integer", "number"):
        low = schema.get("minimum", 0)
        high = schema.get("maximum", low + 1)
        middle = (low + high) / 2
        return int(middle) if kind == "integer" else middle
    if kind == "boolean":
        return True
    return f"(offline echo) {name}"


def count_tokens(text: str) -> int:
    """Estimate tokens as words: good enough for an offline provider's usage."""
    return len(text.split())


class EchoProvider:
    """Reply with the user's last message; clearly marked as offline."""

    name = "echo"

    def __init__(self, model: str = "echo") -> None:
        self.model = model

    def complete(
        self,
        *,
        system: str,
        messages: list[ChatTurn],
        max_tokens: int,
        temperature: float,
        **extra: Any,
    ) -> RawCompletion:
        last = next((m.content for m in reversed(messages) if m.role == "user"), "")
        history = sum(1 for m in messages[:-1] if m.role == "user")
        schema = extra.get("json_schema")
        if schema is not None:  # a pipeline step: a valid object, clearly offline
            text = json.dumps(offline_instance(schema))
        else:
            text = f"(offline echo) You said: {last}"
            if history:
                text += f" [history: {history} earlier message(s)]"
        prompt = count_tokens(system) + sum(count_tokens(m.content) for m in messages)
        return RawCompletion(
            text=text,
            model=self.model,
            prompt_tokens=prompt,
            completion_tokens=count_tokens(text),
        )
