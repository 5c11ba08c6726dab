"""The one back-off policy (no servers)."""

from __future__ import annotations

from esindexer.backoff import Backoff


def test_doubles_from_the_first_delay_up_to_the_cap():
    policy = Backoff(first=0.5, maximum=4.0)
    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_huge_attempt_numbers_stay_at_the_cap():
    assert Backoff(first=1.0, maximum=60.0).delay(10**6) == 60.0


def test_jitter_stays_between_its_floor_and_the_capped_delay():
    policy = Backoff(first=1.0, maximum=8.0, jitter=True, jitter_floor=0.8)
    for attempt in (1, 3, 10):
        capped = min(8.0, 2.0 ** (attempt - 1))
        samples = [policy.delay(attempt) for _ in range(500)]
        assert all(0.8 * capped <= s <= capped for s in samples)
        assert len(set(samples)) > 100  # it does vary


def test_full_jitter_may_retry_at_once():
    policy = Backoff(first=1.0, maximum=8.0, jitter=True)
    assert min(policy.delay(4) for _ in range(2000)) < 0.5
