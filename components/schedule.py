"""Cron expressions for the maintenance jobs: validation, and the interval the Docker scheduler uses.

Kubernetes runs maintenance as CronJobs, so the stack configuration states schedules as standard
five-field cron expressions. The Docker target has no cron: the runtime's own scheduler runs each
job every N seconds. Rather than asking for the same schedule twice (and letting the two drift
apart), the Docker interval is derived from the cron expression: the average time between two
firings, which is exact for the regular schedules people write (``* * * * *``, ``0 * * * *``,
``*/5 * * * *``, ``30 3 * * *``).

This module validates on its own rather than trusting the cluster: a bad expression must fail
``pulumi preview`` with the key named, not surface later as a rejected CronJob.
"""

from __future__ import annotations

import calendar
import datetime as _dt
from dataclasses import dataclass

_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),  # 0 and 7 both mean Sunday
)
_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_abbr) if name}
_DAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


REFERENCE_DAYS = 364


@dataclass(frozen=True)
class Cron:
    """A parsed cron expression: the set of values each field allows."""

    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    day_restricted: bool
    weekday_restricted: bool

    def fires_on(self, date: _dt.date) -> bool:
        """Whether the job runs at all on ``date`` (cron's OR rule for day-of-month/day-of-week)."""
        if date.month not in self.months:
            return False
        weekday = (date.weekday() + 1) % 7  # cron: Sunday = 0
        in_days = date.day in self.days
        in_weekdays = weekday in self.weekdays
        if self.day_restricted and self.weekday_restricted:
            return in_days or in_weekdays
        return in_days and in_weekdays

    def average_interval_s(self) -> int:
        """Mean seconds between firings over a fixed reference period of 52 weeks.

        Whole weeks make weekly schedules exact; a fixed start (a Monday) keeps the result, and
        so the deployed Docker configuration, deterministic. The window (2024) holds a 29
        February, so a leap-day schedule is rare, not invalid.
        """
        per_day = len(self.minutes) * len(self.hours)
        start = _dt.date(2024, 1, 1)
        days = sum(self.fires_on(start + _dt.timedelta(days=i)) for i in range(REFERENCE_DAYS))
        if days == 0:
            raise ValueError(f"cron expression {self.expression!r} never fires")
        return max(60, round(REFERENCE_DAYS * 86400 / (days * per_day)))


def _value(token: str, names: dict[str, int], low: int, high: int, field: str) -> int:
    key = token.lower()
    if key in names:
        return names[key]
    if not token.isdigit():
        raise ValueError(f"{field}: {token!r} is not a number")
    value = int(token)
    if not low <= value <= high:
        raise ValueError(f"{field}: {value} is outside {low}-{high}")
    return value


def _field(text: str, field: str, low: int, high: int, names: dict[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ValueError(f"{field}: empty list element")
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"{field}: bad step {step_text!r}")
            step = int(step_text)
        if part == "*":
            first, last = low, high
        elif "-" in part:
            a, b = part.split("-", 1)
            first = _value(a, names, low, high, field)
            last = _value(b, names, low, high, field)
            if first > last:
                raise ValueError(f"{field}: range {part!r} runs backwards")
        else:
            first = _value(part, names, low, high, field)
            last = high if step > 1 else first
        values.update(range(first, last + 1, step))
    return frozenset(values)


def parse_cron(expression: str) -> Cron:
    """Parse a five-field cron expression (or an ``@hourly``-style macro); ``ValueError`` if bad."""
    if not isinstance(expression, str):
        raise ValueError("a cron expression must be a string")
    text = _MACROS.get(expression.strip().lower(), expression.strip())
    parts = text.split()
    if len(parts) != 5:
        raise ValueError(
            f"cron expression {expression!r} must have 5 fields "
            "(minute hour day-of-month month day-of-week)"
        )
    sets = []
    for raw, (field, low, high) in zip(parts, _FIELDS):
        names = _MONTHS if field == "month" else _DAYS if field == "day of week" else {}
        try:
            sets.append(_field(raw, field, low, high, names))
        except ValueError as exc:
            raise ValueError(f"bad cron expression {expression!r}: {exc}") from None
    weekdays = frozenset(d % 7 for d in sets[4])
    cron = Cron(
        expression=text,
        minutes=sets[0],
        hours=sets[1],
        days=sets[2],
        months=sets[3],
        weekdays=weekdays,
        day_restricted=not parts[2].startswith("*"),
        weekday_restricted=not parts[4].startswith("*"),
    )
    cron.average_interval_s()  # rejects expressions that never fire (e.g. 30 February)
    return cron
