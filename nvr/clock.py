"""Clocks, injected wherever time decides something.

Wall-clock time is stored as UTC microseconds since the epoch (an ``int``); media time comes from the stream and is
never mixed with it. The monotonic clock measures intervals (backoff, stall detection) and is what clock-step
detection compares the wall clock against.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Protocol

from nvr.errors import Kind, NvrError

US_PER_S = 1_000_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class Clock(Protocol):
    def now_us(self) -> int:
        """Wall-clock UTC time in microseconds since the epoch."""

    def monotonic_us(self) -> int:
        """A clock that never steps, for intervals."""


class SystemClock:
    def now_us(self) -> int:
        return time.time_ns() // 1000

    def monotonic_us(self) -> int:
        return time.monotonic_ns() // 1000


class FakeClock:
    """A clock tests move by hand; ``step`` moves only the wall clock, as an NTP correction would."""

    def __init__(self, start_us: int = 1_700_000_000 * US_PER_S) -> None:
        self._lock = threading.Lock()
        self._wall = start_us
        self._mono = 0

    def now_us(self) -> int:
        with self._lock:
            return self._wall

    def monotonic_us(self) -> int:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._wall += int(seconds * US_PER_S)
            self._mono += int(seconds * US_PER_S)

    def step(self, seconds: float) -> None:
        with self._lock:
            self._wall += int(seconds * US_PER_S)


def to_datetime(us: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(us / US_PER_S, tz=dt.UTC)


# --- the accepted range of a time given as input -------------------------------------------------------------
MIN_US = 946_684_800 * US_PER_S
"""2000-01-01T00:00:00Z: the earliest time any input may name (footage, grants and the audit trail are younger)."""
MAX_US = 7_258_118_400 * US_PER_S
"""2200-01-01T00:00:00Z: every input time is before it."""
RANGE_TEXT = "2000-01-01T00:00:00Z (inclusive) to 2200-01-01T00:00:00Z (exclusive)"


def in_range(us: object) -> bool:
    """Whether ``us`` is an integer time inside the accepted range ``[MIN_US, MAX_US)``."""
    return isinstance(us, int) and not isinstance(us, bool) and MIN_US <= us < MAX_US


def sane(us: object) -> int | None:
    """``us`` when it is a time inside the accepted range, else None (for best-effort records of bad input)."""
    return us if in_range(us) else None  # type: ignore[return-value]


def check_time(us: int, what: str = "time") -> int:
    """``us`` if it lies inside the accepted range; else 422 ``time_invalid``. For every time given as a number."""
    if not in_range(us):
        raise NvrError(
            Kind.INVALID_ARGUMENT, "time_invalid", f"{what} {iso(us)} is outside the accepted range {RANGE_TEXT}"
        )
    return us


# --- the one textual form of a stored time ------------------------------------------------------------------
_DAY_US = 86_400 * US_PER_S
_CYCLE_US = 146_097 * _DAY_US
"""400 Gregorian years: the calendar (leap years, weekdays) repeats exactly after it."""
_DT_MIN_US = (dt.datetime(1, 1, 1, tzinfo=dt.UTC) - _EPOCH) // dt.timedelta(microseconds=1)
_DT_MAX_US = (dt.datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=dt.UTC) - _EPOCH) // dt.timedelta(microseconds=1)


def iso(us: int | None) -> str | None:
    """ISO 8601 UTC with microseconds, the one textual form of a stored time. Total: any integer has one.

    Years 0000 to 9999 have the usual four digits (``2026-11-21T08:00:00.000000Z``); a year outside them, which only a
    row written by hand (or before input times were range-checked) can hold, is written in ISO 8601's expanded form
    with a sign and six digits, as JavaScript does: ``+010000-01-01T00:00:00.000000Z``, ``-000001-12-31T…``
    (astronomical years: 0000 is 1 BC). A stored value that is not an integer at all (only SQLite lets a hand-edited
    row hold one) is shown as ``invalid:`` followed by its ``repr``."""
    if us is None:
        return None
    value: object = us
    if isinstance(value, float) and value.is_integer():
        us = int(value)
    elif isinstance(value, bool) or not isinstance(value, int):
        return f"invalid:{value!r}"[:100]
    if _DT_MIN_US <= us <= _DT_MAX_US:
        return (_EPOCH + dt.timedelta(microseconds=us)).isoformat(timespec="microseconds").replace("+00:00", "Z")
    # Outside datetime's years 1..9999: move by whole 400-year cycles into 2000..2399, format, put the years back.
    cycles = (us - MIN_US) // _CYCLE_US
    moved = _EPOCH + dt.timedelta(microseconds=us - cycles * _CYCLE_US)
    year = moved.year + 400 * cycles
    text = moved.isoformat(timespec="microseconds").replace("+00:00", "Z")
    digits = f"{year:04d}" if 0 <= year <= 9999 else f"{'+' if year > 0 else '-'}{abs(year):06d}"
    return digits + text[4:]


def parse_iso(text: str) -> int:
    """Parse an ISO 8601 time; a time without a zone is refused, since guessing one silently shifts footage, and so
    is one outside the accepted range (:data:`MIN_US` to :data:`MAX_US`), even where the zone's offset carries it
    past year 9999 (``9999-12-31T23:59:59-01:00``)."""
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        hint = ""
        if " " in text.strip():
            # A '+' in a URL query arrives as a space: 08:00:00+08:00 becomes '08:00:00 08:00'.
            hint = "; in a URL, write the '+' of a zone offset as %2B (or use Z)"
        raise NvrError(Kind.INVALID_ARGUMENT, "time_invalid", f"time {text!r} is not ISO 8601{hint}") from None
    if value.tzinfo is None:
        raise NvrError(
            Kind.INVALID_ARGUMENT, "time_invalid", f"time {text!r} has no time zone; add Z or an offset such as +08:00"
        )
    try:
        us = (value - _EPOCH) // dt.timedelta(microseconds=1)
    except (ValueError, OverflowError):  # an offset that no UTC datetime can hold
        us = None
    if not in_range(us):
        raise NvrError(
            Kind.INVALID_ARGUMENT, "time_invalid", f"time {text!r} is outside the accepted range {RANGE_TEXT}"
        )
    return us  # type: ignore[return-value]
