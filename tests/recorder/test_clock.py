"""Wall-clock and media time kept apart: a server clock step is detected, recorded, and does not redate footage
already being written; the offset between camera and server time is stored per segment."""

from __future__ import annotations

import itertools
import threading

from sqlalchemy import select

from nvr.clock import SystemClock
from nvr.models import CameraEvent
from nvr.recorder.supervisor import Supervisor
from tests.support.recording import add_camera, segments, wait_for


class SteppableClock(SystemClock):
    """The real clock plus an offset a test can step, as an NTP correction steps a server's wall clock."""

    def __init__(self) -> None:
        self._offset = 0
        self._lock = threading.Lock()

    def now_us(self) -> int:
        with self._lock:
            return super().now_us() + self._offset

    def step(self, seconds: float) -> None:
        with self._lock:
            self._offset += int(seconds * 1_000_000)


def test_server_clock_step_is_detected_and_footage_keeps_its_dates(runtime, demo_server) -> None:
    clock = SteppableClock()
    runtime.clock = clock
    add_camera(runtime, "cam1", demo_server.url("cam1"))
    sup = Supervisor(runtime.recorder_context(), sync_seconds=0.5)
    sup.start()
    try:
        wait_for(lambda: len(segments(runtime, "cam1")) >= 2, 20, "two segments")
        before_step = clock.now_us()
        clock.step(3600)  # the server's clock jumps an hour ahead
        wait_for(lambda: len(segments(runtime, "cam1")) >= 5, 20, "segments after the step")
    finally:
        sup.stop()
    with runtime.db.session() as s:
        events = list(s.scalars(select(CameraEvent).where(CameraEvent.kind == "server_clock_step")))
        drift_events = list(s.scalars(select(CameraEvent).where(CameraEvent.kind == "camera_clock_drift")))
    assert len(events) == 1
    assert "+3600" in events[0].detail
    rows = [seg for seg, _ in segments(runtime, "cam1")]
    stepped = [r for r in rows if r.start_us > before_step + 1800 * 1_000_000]
    unstepped = [r for r in rows if r.start_us <= before_step + 1800 * 1_000_000]
    # The segment open at the step keeps the date it had; later ones follow the corrected clock.
    assert unstepped and stepped
    assert all(r.end_us <= before_step + 5_000_000 for r in unstepped)
    # Offsets between camera media time and server time are stored, and they show the step.
    assert stepped[0].clock_offset_us - unstepped[0].clock_offset_us > 3590 * 1_000_000
    # Consecutive segments after the step abut, except where packets arrived so late (a stalled feed on a loaded
    # machine) that the recorder re-anchored to the wall clock; each such gap is then recorded as an event.
    gaps = [(a.end_us, b.start_us) for a, b in itertools.pairwise(stepped) if b.start_us != a.end_us]
    assert len(gaps) <= len(drift_events), (gaps, [e.detail for e in drift_events])
    assert len(stepped) - 1 > len(gaps)
