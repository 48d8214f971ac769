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


def iso(us: int | None) -> str | None:
    """ISO 8601 UTC with microseconds, the one textual form of a stored time."""
    if us is None:
        return None
    return to_datetime(us).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> int:
    """Parse an ISO 8601 time; a time without a zone is refused, since guessing one silently shifts footage."""
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        hint = ""
        if " " in text.strip():
            # A '+' in a URL query arrives as a space: 08:00:00+08:00 becomes '08:00:00 08:00'.
            hint = "; in a URL, write the '+' of a zone offset as %2B (or use Z)"
        raise NvrError(Kind.INVALID_ARGUMENT, "time_invalid", f"time {text!r} is not ISO 8601{hint}") from None
    if value.tzinfo is None:
        raise NvrError(
            Kind.INVALID_ARGUMENT, "time_invalid", f"time {text!r} has no time zone; add Z or an offset such as +08:00"
        )
    return (value - _EPOCH) // dt.timedelta(microseconds=1)
