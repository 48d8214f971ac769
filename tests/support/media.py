"""Checking media with a second, independent player: the system's ffprobe (another FFmpeg build than PyAV's)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def ffprobe(path: Path) -> dict:
    """Duration, streams and frames counted by ffprobe; asserts it reads the file without a single error."""
    entries = "format=duration:stream=codec_type,nb_read_frames"
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_entries", entries, "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return json.loads(result.stdout)
