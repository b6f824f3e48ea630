"""GitLab's ``expire_in`` grammar (chronic_duration's): every unit spelling, sums, decimals,
and what is refused."""

from __future__ import annotations

import pytest

from runtime.server.durations import DurationError, parse_duration

MIN, HOUR, DAY, WEEK = 60, 3600, 86400, 7 * 86400


@pytest.mark.parametrize("text, seconds", [
    ("30 mins", 30 * MIN), ("2 hrs 20 min", 2 * HOUR + 20 * MIN), ("1 week", WEEK),
    ("3 days", 3 * DAY), ("1h", HOUR), ("42", 42), ("42 seconds", 42), ("1 sec", 1),
    ("5s", 5), ("10 secs", 10), ("1 minute", MIN), ("2 minutes", 2 * MIN), ("7m", 7 * MIN),
    ("1 hour", HOUR), ("3 hours", 3 * HOUR), ("1 hr", HOUR), ("1 day", DAY), ("2d", 2 * DAY),
    ("2 weeks", 2 * WEEK), ("1w", WEEK), ("1 month", 30 * DAY), ("2 mos", 60 * DAY),
    ("1mo", 30 * DAY), ("1 year", 365 * DAY), ("1y", 365 * DAY), ("2 yrs", 730 * DAY),
    ("1.5 hours", 90 * MIN), (".5h", 30 * MIN), ("1d2h", DAY + 2 * HOUR),
    ("1 hour and 30 minutes", 90 * MIN), ("1 day, 2 hours", DAY + 2 * HOUR),
    ("  2 HRS  ", 2 * HOUR), ("1 week 1 day 1 hr 1 min 1 sec", WEEK + DAY + HOUR + MIN + 1),
    ("0", 0), ("0 mins", 0),
])
def test_accepted_forms(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text, message", [
    ("", "empty"), ("   ", "empty"), ("never", "never"), ("soon", "not a duration"),
    ("-1 hour", "not a duration"), ("1 fortnight", "unknown unit"), ("1e9", "unknown unit"),
    ("1 hour; rm -rf /", "not a duration"), ("and", "not a duration"),
    ("1" * 101, "longer than"), ("1..5 h", "not a duration"),
])
def test_refused_forms(text, message):
    with pytest.raises(DurationError, match=message):
        parse_duration(text)
