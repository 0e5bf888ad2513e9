"""PUBSUB_BRIDGE_PROCESSES: how many bridges ``pubsub_bridge`` starts by default."""

from __future__ import annotations

import pytest

from webhooks.bridge import processes
from webhooks.bridge.processes import processes_from


@pytest.mark.parametrize(("cpus", "expected"), [(1, 1), (2, 2), (4, 4), (64, 4)])
def test_auto_is_one_per_usable_cpu_at_most_four(monkeypatch, cpus, expected):
    monkeypatch.setattr(processes.os, "sched_getaffinity", lambda pid: set(range(cpus)))
    assert processes_from("auto") == expected
    assert processes_from("") == expected
    assert processes_from(" AUTO ") == expected


def test_a_number_is_taken_as_it_is():
    assert processes_from("1") == 1
    assert processes_from("8") == 8


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_anything_else_is_refused_with_the_reason(value):
    with pytest.raises(ValueError, match="PUBSUB_BRIDGE_PROCESSES must be 'auto'"):
        processes_from(value)
