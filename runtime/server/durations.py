"""Parse GitLab's ``artifacts:expire_in`` durations (``30 mins``, ``2 hrs 20 min``, ``1 week``).

CI users already write lifetimes this way; GitLab parses them with the chronic_duration gem,
whose grammar is: numbers (``1.5`` allowed) each followed by a unit, several such terms summed
(``1 day 2 hours``, ``1d2h``, ``1 hour and 30 minutes``, commas allowed), and a bare number
meaning seconds. ``never`` is answered separately: whether it is allowed is the caller's
policy, not the grammar's.

Our own small parser, not a dependency: the grammar is a dozen lines, and a library that
guesses ("next tuesday") would accept strings that a person did not mean as a lifetime.
Months and years use chronic_duration's lengths (30 days, 365 days).
"""

from __future__ import annotations

import math
import re

#: Seconds per unit, keyed by every spelling chronic_duration accepts for it.
_UNITS: dict[str, int] = {}
for _names, _seconds in (
        (("s", "sec", "secs", "second", "seconds"), 1),
        (("m", "min", "mins", "minute", "minutes"), 60),
        (("h", "hr", "hrs", "hour", "hours"), 3600),
        (("d", "day", "days"), 86400),
        (("w", "wk", "wks", "week", "weeks"), 7 * 86400),
        (("mo", "mos", "month", "months"), 30 * 86400),
        (("y", "yr", "yrs", "year", "years"), 365 * 86400)):
    for _name in _names:
        _UNITS[_name] = _seconds

_TERM = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([a-z]*)")
_FILLER = re.compile(r"[\s,]+|\band\b")

#: Longer inputs are refused unread (a lifetime is a few words).
MAX_LENGTH = 100

NEVER = "never"


class DurationError(ValueError):
    """The text is not a duration; the message is one line for the client."""


def parse_duration(text: str) -> int:
    """Seconds (rounded to the nearest whole second) that ``text`` denotes.

    Raises :class:`DurationError` for garbage, unknown units and ``never`` (callers check for
    :data:`NEVER` first when they allow it). Zero is returned as 0: the range check is the
    caller's, which knows the bounds.
    """
    if len(text) > MAX_LENGTH:
        raise DurationError(f"expire_in is longer than {MAX_LENGTH} characters")
    s = text.strip().lower()
    if not s:
        raise DurationError("expire_in is empty")
    if s == NEVER:
        raise DurationError("expire_in 'never' is not allowed here")
    total = 0.0
    pos = 0
    terms = 0
    while pos < len(s):
        gap = _FILLER.match(s, pos)
        if gap and gap.end() > pos:
            pos = gap.end()
            continue
        term = _TERM.match(s, pos)
        if term is None:
            raise DurationError(f"expire_in {text!r} is not a duration (e.g. '30 mins', "
                                "'2 hrs 20 min', '1 week')")
        number, unit = term.group(1), term.group(2)
        if unit and unit not in _UNITS:
            raise DurationError(f"expire_in {text!r} has an unknown unit {unit!r}")
        total += float(number) * (_UNITS[unit] if unit else 1)
        terms += 1
        pos = term.end()
    if terms == 0:
        raise DurationError(f"expire_in {text!r} is not a duration")
    if not math.isfinite(total):
        raise DurationError(f"expire_in {text!r} is too large")
    return int(round(total))


__all__ = ["DurationError", "MAX_LENGTH", "NEVER", "parse_duration"]
