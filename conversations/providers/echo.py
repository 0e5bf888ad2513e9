"""Answer offline, with no account: the embedded default provider."""

from __future__ import annotations

from typing import Any

from .base import ChatTurn, RawCompletion


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
