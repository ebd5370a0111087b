"""The rate limiter and origin matching on their own."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from signaling.core.limits import RateLimiter
from signaling.core.origin import OriginPolicy


def test_bucket_allows_a_burst_then_the_rate() -> None:
    limiter = RateLimiter(rate=10, burst=5, now=100.0)
    assert [limiter.allow(100.0) for _ in range(6)] == [True] * 5 + [False]
    assert limiter.strikes == 1
    assert not limiter.allow(100.05)  # half a token
    assert limiter.strikes == 2
    assert limiter.allow(100.1)  # a whole one
    assert limiter.strikes == 0
    assert not limiter.allow(100.1)


def test_bucket_never_holds_more_than_the_burst() -> None:
    limiter = RateLimiter(rate=10, burst=3, now=0.0)
    allowed = sum(limiter.allow(1000.0) for _ in range(10))
    assert allowed == 3


@given(st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=300))
def test_bucket_never_exceeds_burst_plus_rate_times_time(gaps: list[float]) -> None:
    rate, burst = 20.0, 7
    limiter = RateLimiter(rate=rate, burst=burst, now=0.0)
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        allowed += limiter.allow(now)
    assert allowed <= burst + rate * now + 0.01


def test_open_policy_allows_everything() -> None:
    policy = OriginPolicy()
    assert policy.open
    assert policy.allows("https://anything.example") and policy.allows("null")
    assert policy.allows(None)


def test_patterns() -> None:
    policy = OriginPolicy(
        ["https://app.example.com", "https://*.example.org", "http://localhost:8080"]
    )
    assert not policy.open
    for origin in (
        "https://app.example.com",
        "https://App.Example.Com",
        "https://a.example.org",
        "https://a.b.example.org",
        "http://localhost:8080",
        None,
    ):
        assert policy.allows(origin), origin
    for origin in (
        "https://example.org",  # "*." needs a label before the dot
        "https://app.example.com.evil.net",
        "https://evilexample.org",
        "https://a.example.org:444",
        "http://localhost",
        "http://localhost:8081",
        "null",
        "",
    ):
        assert not policy.allows(origin), origin
