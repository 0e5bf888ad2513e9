"""Fixtures of the pipeline tests: a scripted model and a worker pointed at it."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from conftest import fake_ai_env

_PERSONA = re.compile(r"PERSONA: (\S+)")


def _texts(body: dict[str, Any]) -> list[str]:
    out = []
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(
                p.get("text", "") for p in content if isinstance(p, dict)
            )
        if message.get("role") == "user" and isinstance(content, str):
            out.append(content)
    return out


def step_of(body: dict[str, Any]) -> str:
    """Return the step a model request belongs to (``review:<persona>``...)."""
    first = _texts(body)[0]
    task = first.split("\n", 1)[0].removeprefix("TASK: ").strip()
    if task == "review":
        match = _PERSONA.search(first)
        return f"review:{match.group(1) if match else '?'}"
    return task


def is_repair(body: dict[str, Any]) -> bool:
    """Return whether the request is the follow-up asking to fix the JSON."""
    return _texts(body)[-1].startswith("TASK: repair")


VALID = {
    "expand": {
        "title": "Idea",
        "summary": "A brief",
        "goals": ["grow"],
        "assumptions": ["users want it"],
        "questions": ["cost?"],
    },
    "review": {
        "verdict": "approve",
        "score": 7,
        "strengths": ["clear"],
        "risks": ["cost"],
    },
    "aggregate": {
        "verdict": "approve",
        "agreement": 0.8,
        "key_points": ["consensus reached"],
        "dissent": [],
    },
}


class ScriptedModel:
    """Answer each step with valid JSON; selected steps fail or talk nonsense."""

    def __init__(
        self,
        *,
        fail: Iterable[str] = (),
        garbage: Iterable[str] = (),
        garbage_once: Iterable[str] = (),
        hold: Iterable[str] = (),
    ) -> None:
        self.fail = set(fail)
        # Steps in ``hold`` hang until ``release`` is set (or 60 s pass).
        self.hold = set(hold)
        self.release = threading.Event()
        self.garbage = set(garbage)
        self.garbage_once = set(garbage_once)
        self.lock = threading.Lock()
        self.seen: list[str] = []

    def __call__(self, path: str, body: dict[str, Any]) -> str:
        step = step_of(body)
        with self.lock:
            self.seen.append(step)
        if step in self.hold:
            self.release.wait(60)
        if step in self.fail:
            raise RuntimeError(f"scripted failure of {step}")  # the fake answers 500
        if step in self.garbage:
            return "I think this is a great idea!"
        if step in self.garbage_once and not is_repair(body):
            return "Sure! Here it is: {verdict: approve"
        return json.dumps(VALID[step.split(":")[0]])

    def count(self, step: str) -> int:
        with self.lock:
            return self.seen.count(step)


@pytest.fixture
def scripted(fake_ai) -> Callable[..., ScriptedModel]:
    """Install a ScriptedModel on the fake model server."""

    def install(**kwargs: Any) -> ScriptedModel:
        model = ScriptedModel(**kwargs)
        fake_ai.set_responder(model)
        return model

    return install


def worker_env(server: Any, **extra: Any) -> dict[str, str]:
    """Return the env of a pipeline worker: the fake model, fast retries."""
    return {
        **fake_ai_env(server),
        "AI_MAX_RETRIES": "1",
        "MAX_RETRIES_PER_PERSONA": "1",
        "RETRY_INITIAL_BACKOFF_SECONDS": "0.05",
        "PIPELINE_WAIT_SECONDS": "0.2",
        **{k: str(v) for k, v in extra.items()},
    }
