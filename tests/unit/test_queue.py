"""The work queue: dedup, one worker per key, back-off with a cap, delayed adds."""

from __future__ import annotations

import asyncio
import time

import pytest

from podgate.kube.queue import WorkQueue, retry_delay
from podgate.model.ratelimit import TokenBucket


async def test_dedup_and_order() -> None:
    q = WorkQueue()
    for key in ("a", "b", "a", "c", "b"):
        q.add(key)
    assert len(q) == 3
    got = [(await q.get())[0] for _ in range(3)]
    assert got == ["a", "b", "c"]


async def test_key_in_progress_is_requeued_once_after_done() -> None:
    q = WorkQueue()
    q.add("a")
    key, _ = await q.get()
    q.add("a")
    q.add("a")
    assert len(q) == 0, "not handed to a second worker while processing"
    q.done(key)
    assert len(q) == 1
    assert (await q.get())[0] == "a"


async def test_rate_limited_backoff_grows_and_caps() -> None:
    q = WorkQueue(base_delay=0.01, max_delay=0.04, rate=1000, burst=1000)
    waits = []
    for _ in range(5):
        asked = time.monotonic()
        q.add_rate_limited("a")
        waits.append(q.delays()[0] - asked)
        async with asyncio.timeout(1):
            key, _ = await q.get()  # the failed pass runs again, and fails again
        q.done(key)
    assert q.failures("a") == 5
    assert waits == pytest.approx([0.01, 0.02, 0.04, 0.04, 0.04], abs=0.005), "doubling, capped"
    q.forget("a")
    assert q.failures("a") == 0


async def test_a_key_waits_for_its_earliest_delayed_add_only() -> None:
    """client-go's AddAfter: every pass of a polled key asks for the next poll, and a pass that
    an event ran in between must not start a second poll of the key beside the first."""
    q = WorkQueue()
    q.add_after("a", 0.2)
    q.add_after("a", 0.5)  # later: the waiting one comes first and the pass decides again
    q.add_after("a", 0.05)  # earlier: supersedes
    assert len(q.delays()) == 1
    async with asyncio.timeout(1):
        key, _ = await q.get()
    q.done(key)
    assert key == "a"
    await asyncio.sleep(0.3)  # the superseded 0.2 s add is dropped, not delivered again
    assert len(q) == 0 and q.delays() == []


async def test_add_after_delivers_later() -> None:
    q = WorkQueue()
    q.add_after("later", 0.05)
    assert len(q) == 0
    async with asyncio.timeout(1):
        key, _ = await q.get()
    assert key == "later"


def test_token_bucket_limits_bursts() -> None:
    now = [100.0]
    bucket = TokenBucket(rate=10, burst=2, clock=lambda: now[0])
    waits = [bucket.reserve() for _ in range(4)]
    assert waits[:2] == [0.0, 0.0]
    assert waits[2:] == pytest.approx([0.1, 0.2])  # a fixed clock: the exact schedule
    now[0] += 0.3  # time passes: three tokens back, less the two owed
    assert bucket.reserve() == pytest.approx(0.0, abs=1e-9)


async def test_adds_and_retries_are_prometheus_counters() -> None:
    """What a scrape shows: counters (so ``rate()`` works), under controller-runtime's names,
    counting adds as client-go does (a duplicate of a waiting or already re-due key is not an add)."""
    from prometheus_client import generate_latest

    from podgate.controller import metrics

    def scraped() -> str:
        return generate_latest(metrics.REGISTRY).decode()

    q = WorkQueue(base_delay=60, max_delay=60, name="unit-counters", metrics=metrics.QueueCounters())
    text = scraped()
    assert "# TYPE workqueue_adds_total counter" in text.splitlines()
    assert "# TYPE workqueue_retries_total counter" in text.splitlines()
    assert 'workqueue_adds_total{name="unit-counters"} 0.0' in text.splitlines(), "seen before any add"
    assert 'workqueue_retries_total{name="unit-counters"} 0.0' in text.splitlines()

    for key in ("a", "b", "a"):
        q.add(key)
    key, _ = await q.get()
    q.add(key)  # due again once done: one add
    q.add(key)  # already due again: not another
    q.done(key)  # re-queued: counted when it was added, not now
    q.add_rate_limited("c")
    q.add_rate_limited("c")
    lines = scraped().splitlines()
    assert 'workqueue_adds_total{name="unit-counters"} 3.0' in lines
    assert 'workqueue_retries_total{name="unit-counters"} 2.0' in lines
    assert len(q) == 2 and q.failures("c") == 2


@pytest.mark.parametrize(
    ("failures", "cap", "want"),
    [
        (0, None, 0.05),
        (3, None, 0.4),
        (9, None, 25.6),
        (10, None, 30.0),  # the queue's own cap
        (2000, None, 30.0),  # no overflow however long the outage
        (0, 1.0, 0.05),  # a cap above the back-off changes nothing
        (5, 1.0, 1.0),
        (10, 0.5, 0.5),  # after minutes of failures: the cap, not 30 s
    ],
)
def test_retry_delay_doubles_up_to_the_queues_cap_or_the_callers(
    failures: int, cap: float | None, want: float
) -> None:
    assert retry_delay(failures, 0.05, 30.0, cap) == pytest.approx(want)


async def test_a_capped_retry_is_due_within_the_cap_after_many_failures() -> None:
    capped, uncapped = (WorkQueue(base_delay=0.05, max_delay=30.0, rate=1000, burst=1000) for _ in range(2))
    now = time.monotonic()
    for _ in range(12):
        capped.add_rate_limited("a", cap=0.1)
        uncapped.add_rate_limited("a")
    assert capped.failures("a") == 12  # counted all the same: ``forget`` starts it over
    assert max(capped.delays()) - now <= 0.1 + 0.05
    # the uncapped key waits for its first retry (a key waits for one delayed add, the earliest),
    # and the back-off it would take next is the queue's cap
    assert uncapped.failures("a") == 12 and retry_delay(12, 0.05, 30.0) == 30.0
