"""Backoff arithmetic, Retry-After parsing and key redaction (pure)."""

from __future__ import annotations

import email.utils
import random

from trace_engine.judge.retry import Backoff, is_transient_status, redact, retry_after_seconds


def test_retry_after_forms() -> None:
    assert retry_after_seconds({"Retry-After": "3"}) == 3.0
    assert retry_after_seconds({"retry-after": "1.5"}) == 1.5
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25  # ms wins
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 20, usegmt=True)
    assert retry_after_seconds({"retry-after": date}, now=now) == 20.0
    assert retry_after_seconds({"retry-after": email.utils.formatdate(now - 50, usegmt=True)}, now=now) == 0.0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


def test_full_jitter_is_bounded_and_capped() -> None:
    b = Backoff(max_retries=10, base_delay=0.5, max_delay=4.0, max_retry_after=60.0)
    rng = random.Random(0)
    for attempt in range(1, 10):
        cap = min(4.0, 0.5 * 2 ** (attempt - 1))
        delays = [b.delay(attempt, None, rng) for _ in range(200)]
        assert all(0.0 <= d <= cap for d in delays)
        assert max(delays) > cap * 0.8  # full jitter spreads over the whole range
    assert b.delay(1, 7.0, rng) == 7.0
    assert b.delay(1, 1e6, rng) == 60.0


def test_transient_status() -> None:
    assert all(is_transient_status(s) for s in (408, 429, 500, 502, 503, 504, 599))
    assert not any(is_transient_status(s) for s in (400, 401, 403, 404, 422))


def test_redact() -> None:
    assert redact("bad key sk-abcdef123456 given", None) == "bad key sk-*** given"
    assert "hunter2secret" not in redact("token hunter2secret leaked", "hunter2secret")
