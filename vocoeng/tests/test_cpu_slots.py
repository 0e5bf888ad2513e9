"""CPU slots: how many threads run the reply task's database work at once."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from vocoeng.cpu_slots import cpu_slot


class Occupancy:
    """Count the threads inside a block; remember the most at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.most = 0

    def __enter__(self) -> None:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.now -= 1


def _crowd(threads: int, body) -> None:
    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(body) for _ in range(threads)]:
            future.result(timeout=10)


@pytest.mark.parametrize("slots", [1, 2])
def test_at_most_the_configured_number_of_threads_hold_a_slot(settings, slots) -> None:
    settings.AI_WORKER_CPU_SLOTS = slots
    inside = Occupancy()

    def body() -> None:
        with cpu_slot(), inside:
            time.sleep(0.03)

    _crowd(6, body)
    assert inside.most == slots


def test_zero_slots_is_no_limit(settings) -> None:
    settings.AI_WORKER_CPU_SLOTS = 0
    # All six must be inside at once for the barrier to open.
    barrier = threading.Barrier(6, timeout=5)

    def body() -> None:
        with cpu_slot():
            barrier.wait()

    _crowd(6, body)


def test_a_thread_holding_a_slot_does_not_wait_for_a_second(settings) -> None:
    settings.AI_WORKER_CPU_SLOTS = 1
    done = threading.Event()

    def nested() -> None:
        with cpu_slot(), cpu_slot():
            pass
        with cpu_slot():  # and both levels gave the one slot back
            done.set()

    thread = threading.Thread(target=nested, daemon=True)
    thread.start()
    thread.join(5)
    assert done.is_set()


def test_the_slot_is_given_back_when_the_block_raises(settings) -> None:
    settings.AI_WORKER_CPU_SLOTS = 1
    with pytest.raises(RuntimeError), cpu_slot():
        raise RuntimeError("boom")
    acquired = threading.Event()

    def other() -> None:
        with cpu_slot():
            acquired.set()

    thread = threading.Thread(target=other, daemon=True)
    thread.start()
    thread.join(5)
    assert acquired.is_set()


@pytest.mark.django_db(transaction=True)
def test_reply_tasks_hold_a_slot_for_their_database_work_not_the_model_call(
    fake_ai, settings, monkeypatch
) -> None:
    """Eight replies at once with one slot: the claims and the reply writes
    go one at a time, while the model calls overlap."""
    from conversations import services
    from conversations.models import Message
    from conversations.providers.openai import OpenAIProvider
    from conversations.routes import inbound_store

    settings.AI_WORKER_CPU_SLOTS = 1
    settings.AI_FALLBACK = []
    fake_ai.latency = 0.3
    claims, writes, calls = Occupancy(), Occupancy(), Occupancy()

    def counted(occupancy: Occupancy, fn):
        def wrapper(*args, **kwargs):
            with occupancy:
                return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(
        services, "message_claim_read", counted(claims, services.message_claim_read)
    )
    monkeypatch.setattr(services, "reply_write", counted(writes, services.reply_write))
    monkeypatch.setattr(
        OpenAIProvider, "complete", counted(calls, OpenAIProvider.complete)
    )
    ids = [
        inbound_store(
            data={
                "source": "api",
                "user_id": f"slot-{n}",
                "message": f"question {n}",
                "message_id": f"slot-{n}",
            }
        )[0].pk
        for n in range(8)
    ]

    def reply(message_id) -> None:
        from django.db import connection

        try:
            services.reply_generate(message_id=message_id)
        finally:
            connection.close()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(reply, ids, timeout=60))

    replies = Message.objects.filter(role=Message.Role.ASSISTANT, reply_to_id__in=ids)
    assert replies.count() == 8
    assert claims.most == 1
    assert writes.most == 1
    assert calls.most > 1  # the slot is given back for the model call


def test_a_released_slot_serves_another_thread_and_comes_back(settings) -> None:
    from vocoeng.cpu_slots import cpu_slot_released

    settings.AI_WORKER_CPU_SLOTS = 1
    other_in, other_out = threading.Event(), threading.Event()

    def other() -> None:
        with cpu_slot():
            other_in.set()
        other_out.set()

    with cpu_slot():
        thread = threading.Thread(target=other, daemon=True)
        with cpu_slot_released():
            thread.start()
            assert other_in.wait(5)  # the slot was free while released
            assert other_out.wait(5)
        # Held again: a third thread waits until the block ends.
        third_in = threading.Event()
        third = threading.Thread(
            target=lambda: (cpu_slot().__enter__(), third_in.set()), daemon=True
        )
        third.start()
        assert not third_in.wait(0.2)
    assert third_in.wait(5)


def test_openai_calls_hold_a_slot_except_on_the_network(fake_ai, settings) -> None:
    """One slot, four threads calling the model at once: the requests are on
    the network together, and none of them holds the slot there."""
    from conversations import providers
    from conversations.providers import ChatTurn
    from conversations.providers.openai import OpenAIProvider
    from vocoeng import cpu_slots

    settings.AI_WORKER_CPU_SLOTS = 1
    settings.AI_FALLBACK = []
    fake_ai.latency = 0.3
    provider = providers.get_provider("openai")
    assert isinstance(provider, OpenAIProvider)
    transport = provider.client._client._transport
    inner = transport._inner
    on_network = Occupancy()
    held_on_network: list[bool] = []

    class Counting:
        def handle_request(self, request):
            held_on_network.append(getattr(cpu_slots._local, "held", None) is not None)
            with on_network:
                return inner.handle_request(request)

    transport._inner = Counting()
    try:
        results = []

        def call() -> None:
            results.append(
                provider.complete(
                    system="",
                    messages=[ChatTurn(role="user", content="hi")],
                    max_tokens=16,
                    temperature=0.0,
                )
            )

        _crowd(4, call)
    finally:
        transport._inner = inner
    assert len(results) == 4 and all(r.text for r in results)
    assert held_on_network == [False] * 4
    assert on_network.most > 1


@pytest.mark.django_db(transaction=True)
def test_a_thread_waiting_for_a_slot_gives_its_database_connection_back(
    settings, monkeypatch
) -> None:
    from django.db import connection

    from vocoeng import cpu_slots

    if connection.vendor == "sqlite":
        pytest.skip("SQLite connections are the thread's own file handle, kept")
    settings.AI_WORKER_CPU_SLOTS = 1
    seen: dict[str, object] = {}
    released = threading.Event()

    original = cpu_slots.connection_release

    def release() -> None:
        original()
        released.set()

    monkeypatch.setattr(cpu_slots, "connection_release", release)

    def other() -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            seen["before"] = connection.connection is not None
            with cpu_slot():
                seen["inside"] = connection.connection is not None
        finally:
            connection.close()

    with cpu_slot():  # held here, so the other thread has to wait
        thread = threading.Thread(target=other, daemon=True)
        thread.start()
        assert released.wait(5)
    thread.join(5)
    assert seen == {"before": True, "inside": False}
