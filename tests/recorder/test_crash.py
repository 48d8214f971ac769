"""SIGKILL mid-segment: at start-up the torn file is cut back to its last complete fragment, registered, and
decodes; at most one GOP (the fragment being built) is lost."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from nvr.recorder.recovery import recover_all
from storage import fmp4
from tests.support.recording import FPS, GOP_S, add_camera, decode_all, segments, sha256, wait_for


def _partials(volume: Path) -> list[Path]:
    return list(volume.rglob("*.partial"))


def test_sigkill_mid_segment_loses_at_most_one_gop(runtime, demo_server, nvr_env, caplog, tmp_path) -> None:
    add_camera(runtime, "cam1", demo_server.url("cam1"))
    volume = runtime.settings.effective_volumes[0]
    env = dict(nvr_env, NVR_SEGMENT_SECONDS="60", NVR_LOG_LEVEL="INFO")
    log_file = (tmp_path / "recorder.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nvr", "record"], env=env, stdout=subprocess.DEVNULL, stderr=log_file
    )
    try:
        wait_for(lambda: bool(_partials(volume)), 30, "a segment in progress")
        partial = _partials(volume)[0]
        wait_for(lambda: len(fmp4.scan(partial).fragments) >= 4, 30, "four complete fragments")
        time.sleep(0.5 * GOP_S)  # land in the middle of a GOP
        sent = demo_server.frames_sent("cam1")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log_file.close()
    assert proc.returncode == -signal.SIGKILL
    assert segments(runtime, "cam1") == []
    torn = fmp4.scan(partial)

    caplog.set_level("WARNING")
    counts = recover_all(runtime.recorder_context())
    assert counts == {"recovered": 1}
    assert ("cut back" in caplog.text or "fragment boundary" in caplog.text) and "registered" in caplog.text

    rows = segments(runtime, "cam1")
    assert len(rows) == 1
    seg, path = rows[0]
    assert seg.recovered
    assert path.is_file() and not partial.exists()
    assert sha256(path) == seg.sha256
    frames, first_is_key = decode_all(path)
    assert first_is_key
    assert frames == seg.frames == sum(f.sample_counts.get(1, 0) for f in torn.fragments)
    lost = sent - frames
    assert 0 <= lost <= GOP_S * FPS + 5, f"lost {lost} frames; at most one GOP ({GOP_S * FPS}) may be lost"
