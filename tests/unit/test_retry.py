"""The cloud providers' one retry loop: back-off, retry-after, deadline, counting (no real sleep)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from podgate.model.ratelimit import TokenBucket
from podgate.providers.retry import Retry


class Busy(Exception):
    def __init__(self, after: float | None = None) -> None:
        super().__init__("busy")
        self.after = after


class Clock:
    """A fake clock that the fake sleep moves on."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def make(
    clock: Clock, jitter: float = 0.0, *, base_delay: float = 0.2, max_retries: int = 6, **kw: float
) -> Retry:
    return Retry(
        TokenBucket(1000.0, 1000, clock=clock),
        max_retries=max_retries,
        base_delay=base_delay,
        sleep=clock.sleep,
        clock=clock,
        jitter=lambda: jitter,
        **kw,
    )


def failing(times: int, error: Exception) -> tuple[list[int], Callable[[], Awaitable[str]]]:
    calls: list[int] = []

    async def attempt() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error
        return "answer"

    return calls, attempt


def is_busy(e: Exception) -> bool:
    return isinstance(e, Busy)


def after(e: Exception) -> float | None:
    return e.after if isinstance(e, Busy) else None


async def test_retries_with_exponential_equal_jitter_and_counts() -> None:
    clock = Clock()
    retry = make(clock, base_delay=0.2)
    calls, attempt = failing(3, Busy())
    assert await retry.call(attempt, is_busy) == "answer"
    assert len(calls) == 4 and retry.throttled == 3
    assert clock.slept == pytest.approx([0.1, 0.2, 0.4])  # jitter 0: the lower half
    assert make(Clock(), jitter=1.0, base_delay=0.2).backoff(2) == pytest.approx(0.8)


async def test_not_retryable_propagates_at_once() -> None:
    clock = Clock()
    retry = make(clock)
    calls, attempt = failing(1, ValueError("bad request"))
    with pytest.raises(ValueError, match="bad request"):
        await retry.call(attempt, is_busy)
    assert len(calls) == 1 and retry.throttled == 0 and clock.slept == []


async def test_last_error_after_max_retries() -> None:
    clock = Clock()
    retry = make(clock, max_retries=2)
    calls, attempt = failing(10, Busy())
    with pytest.raises(Busy):
        await retry.call(attempt, is_busy)
    assert len(calls) == 3 and retry.throttled == 2


async def test_server_retry_after_wins_when_longer_and_is_capped() -> None:
    clock = Clock()
    retry = make(clock, base_delay=0.2, max_retry_after=5.0)
    _, attempt = failing(1, Busy(after=2.5))
    await retry.call(attempt, is_busy, after)
    assert clock.slept == [2.5]
    assert retry.backoff(0, 100.0) == 5.0  # capped
    assert retry.backoff(0, 0.01) == pytest.approx(0.1)  # shorter than ours: ours


async def test_deadline_stops_backing_off() -> None:
    clock = Clock()
    retry = make(clock, base_delay=1.0, deadline=2.0)
    calls, attempt = failing(10, Busy())
    with pytest.raises(Busy):
        await retry.call(attempt, is_busy)
    # slept 0.5 and 1.0; the next back-off (2.0) would end after the deadline
    assert clock.slept == pytest.approx([0.5, 1.0]) and len(calls) == 3


async def test_each_attempt_takes_a_token() -> None:
    clock = Clock()
    retry = Retry(TokenBucket(10.0, 1, clock=clock), sleep=clock.sleep, clock=clock, jitter=lambda: 0.0)
    _, attempt = failing(1, Busy())
    await retry.call(attempt, is_busy)
    # first attempt: the burst token; back-off 0.1 s refills exactly one token for the second
    assert clock.slept == pytest.approx([0.1])


async def test_unmetered_at_once_retries_without_a_bucket_or_a_sleep() -> None:
    """HAProxy's settings: no bucket, no back-off, no deadline, one retry."""
    clock = Clock()
    retry = Retry(None, max_retries=1, base_delay=0.0, deadline=float("inf"), sleep=clock.sleep, clock=clock)
    calls, attempt = failing(1, Busy())
    assert await retry.call(attempt, is_busy) == "answer"
    assert len(calls) == 2 and clock.slept == []
    calls, attempt = failing(2, Busy())
    with pytest.raises(Busy):
        await retry.call(attempt, is_busy)
    assert len(calls) == 2


async def test_no_back_off_of_our_own_is_longer_than_max_delay_but_retry_after_is_honoured() -> None:
    """A provider caps its back-off at its poll interval: a call throttled for minutes is tried
    again within that interval of the API answering, whatever the jitter."""
    clock = Clock()
    retry = make(clock, jitter=1.0, base_delay=0.2, max_delay=1.0)
    _, attempt = failing(6, Busy())
    assert await retry.call(attempt, is_busy) == "answer"
    assert clock.slept == pytest.approx([0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    assert make(Clock(), base_delay=0.2, max_delay=1.0).backoff(9, retry_after=3.0) == pytest.approx(3.0)
