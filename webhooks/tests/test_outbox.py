"""The outbox publishes from a thread of its own, keeps what the broker refused,
and publishes what is left when the process exits."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import wait_for
from webhooks.outbox import Outbox

pytestmark = pytest.mark.timeout(60)


class Sink:
    """A publish function: records each batch; refuses while ``down``."""

    def __init__(self) -> None:
        self.batches: list[list] = []
        self.down = False
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, items) -> None:
        self.gate.wait()
        if self.down:
            raise ConnectionError("broker down")
        self.batches.append(list(items))

    def published(self) -> list:
        return [item for batch in self.batches for item in batch]


def test_items_put_while_a_publish_runs_go_together_in_the_next() -> None:
    sink = Sink()
    box = Outbox(sink)
    sink.gate.clear()  # the first publish is held
    box.put([("d-0", "c-0")])
    wait_for(lambda: box.busy)
    for i in range(1, 6):
        box.put([(f"d-{i}", f"c-{i}")])
    assert box.pending() == 6
    sink.gate.set()
    assert box.flush(5)
    assert [len(b) for b in sink.batches] == [1, 5]
    assert sink.published() == [(f"d-{i}", f"c-{i}") for i in range(6)]
    assert box.pending() == 0


def test_a_batch_holds_at_most_max_batch() -> None:
    sink = Sink()
    box = Outbox(sink, max_batch=3)
    sink.gate.clear()
    box.put([("first", None)])
    wait_for(lambda: box.busy)
    box.put([(str(i), None) for i in range(7)])
    sink.gate.set()
    assert box.flush(5)
    assert [len(b) for b in sink.batches] == [1, 3, 3, 1]


def test_refused_items_are_kept_in_order_and_published_once_the_broker_is_back(
    caplog,
) -> None:
    sink = Sink()
    box = Outbox(sink)
    box.BACKOFF = (0.01, 0.05)
    sink.down = True
    with caplog.at_level(logging.WARNING, logger="webhooks.outbox"):
        box.put([("a", "1"), ("b", "2")])
        wait_for(lambda: box.failures >= 3)
        box.put([("c", "3")])
        assert not box.flush(0.1)
        assert box.pending() == 3
        sink.down = False
        assert box.flush(5)
    assert sink.published() == [("a", "1"), ("b", "2"), ("c", "3")]
    assert box.failures == 0
    messages = [r.getMessage() for r in caplog.records]
    # Said once when it began (not once a try) and once when it ended.
    assert sum("webhook_outbox_refused" in m for m in messages) == 1
    assert any("webhook_outbox_recovered" in m for m in messages)


def test_past_max_held_the_oldest_are_left_to_the_sweep(caplog) -> None:
    sink = Sink()
    box = Outbox(sink)
    box.MAX_HELD = 4
    sink.gate.clear()
    box.put([("busy", None)])
    wait_for(lambda: box.busy)
    with caplog.at_level(logging.WARNING, logger="webhooks.outbox"):
        box.put([(str(i), None) for i in range(6)])
    assert "webhook_outbox_full dropped=2" in caplog.text
    sink.gate.set()
    assert box.flush(5)
    kept = [(str(i), None) for i in range(2, 6)]
    assert sink.published() == [("busy", None), *kept]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork (POSIX)")
def test_a_forked_child_publishes_its_own_items_not_its_parents(tmp_path) -> None:
    out = tmp_path / "published"
    sink = Sink()

    def publish(items):
        sink(items)
        with out.open("a") as f:  # what the child publishes reaches the test
            f.write(json.dumps([os.getpid(), list(items)]) + "\n")

    box = Outbox(publish)
    sink.gate.clear()
    box.put([("parent-1", None)])
    wait_for(lambda: box.busy)
    box.put([("parent-2", None)])  # held when the child is forked
    pid = os.fork()
    if pid == 0:  # the child: a thread of its own, none of the parent's items
        try:
            sink.gate.set()
            box.put([("child", None)])
            os._exit(0 if box.flush(5) else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    sink.gate.set()
    assert box.flush(5)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    by_pid: dict[int, list] = {}
    for who, items in lines:
        by_pid.setdefault(who, []).extend(tuple(i) for i in items)
    assert by_pid == {
        pid: [("child", None)],
        os.getpid(): [("parent-1", None), ("parent-2", None)],
    }


_EXITING = """
import sys, time
from webhooks.outbox import outbox

def publish(items):
    time.sleep(0.2)  # still publishing when the main thread is done
    print("published", ",".join(i for i, _ in items), flush=True)

box = outbox(publish)
box.put([("a", None)])
box.put([("b", None), ("c", None)])
print("exiting", flush=True)
"""


def test_what_is_left_is_published_when_the_process_exits() -> None:
    root = Path(__file__).resolve().parents[2]
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _EXITING],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    assert lines[0] == "exiting"
    published = [
        i for line in done.stdout.splitlines()[1:] for i in line.split()[1].split(",")
    ]
    assert sorted(published) == ["a", "b", "c"]
    assert time.monotonic() - started < 20
