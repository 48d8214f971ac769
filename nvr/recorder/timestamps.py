"""Repairing the timestamps an RTSP camera sends, so the muxer gets a strictly increasing timeline.

Cameras and FFmpeg's RTSP input produce: a first keyframe with no pts/dts (before the first RTCP report), a
timeline that restarts when the camera reboots or its clock is set, duplicate or slightly reordered dts. The rule
here is: never drop a packet for its timestamps. Missing ones are filled from the previous packet plus the
nominal duration; a jump backwards, or forwards further than the wall clock moved, is a discontinuity: the output
timeline continues one nominal duration after the last packet, and the jump is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction


@dataclass
class Discontinuity:
    stream_index: int
    jump_seconds: float
    """Input timeline jump minus the time that passed on the server's monotonic clock."""


class StreamTimeline:
    def __init__(self, index: int, time_base: Fraction, nominal_duration: int, step_threshold_s: float) -> None:
        self.index = index
        self.time_base = time_base
        self.nominal = max(1, nominal_duration)
        self.threshold = step_threshold_s
        # This runs for every packet of every camera: integer arithmetic only (Fraction costs microseconds).
        self._tb_num = time_base.numerator
        self._tb_den = time_base.denominator
        self._threshold_us = int(step_threshold_s * 1_000_000)
        self._correction = 0
        self._last_in: int | None = None
        self._last_out: int | None = None
        self._last_arrival_us: int | None = None
        self.filled = 0
        """Packets that came without any timestamp and were given one."""

    def fix(self, pts: int | None, dts: int | None, arrival_mono_us: int) -> tuple[int, int, Discontinuity | None]:
        """Return (pts, dts) on the output timeline for a packet, and a discontinuity if one was found."""
        if dts is None and pts is not None and self._last_out is not None and pts + self._correction > self._last_out:
            dts = pts
        if dts is None:
            # No timestamp at all (typically the first keyframe): place it one nominal duration after the last.
            out = 0 if self._last_out is None else self._last_out + self.nominal
            self._last_out = out
            self.filled += 1
            return out, out, None
        event = None
        if self._last_in is None:
            if self._last_out is not None:
                self._correction = self._last_out + self.nominal - dts
        else:
            step_us = (dts - self._last_in) * self._tb_num * 1_000_000 // self._tb_den
            elapsed_us = arrival_mono_us - (self._last_arrival_us or arrival_mono_us)
            # Backwards by more than a frame is a new timeline (a duplicate or one-tick reorder is not): pushing
            # later packets to "previous + 1" instead would squeeze real seconds of footage into a few ticks.
            if dts - self._last_in < -self.nominal or step_us - elapsed_us > self._threshold_us:
                assert self._last_out is not None
                self._correction = self._last_out + self.nominal - dts
                event = Discontinuity(self.index, (step_us - elapsed_us) / 1e6)
        out_dts = dts + self._correction
        if self._last_out is not None and out_dts <= self._last_out:
            out_dts = self._last_out + 1
        out_pts = (pts + self._correction) if pts is not None else out_dts
        out_pts = max(out_pts, out_dts)
        self._last_in = dts
        self._last_out = out_dts
        self._last_arrival_us = arrival_mono_us
        return out_pts, out_dts, event
