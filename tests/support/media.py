"""Checking media independently of the code under test: the system's ffprobe (another FFmpeg build than PyAV's)
and a walk over an MP4's top-level boxes."""

from __future__ import annotations

import json
import struct
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


def top_boxes(data: bytes) -> list[tuple[bytes, int, int]]:
    """(type, payload start, end) of the top-level boxes, independently of the module under test."""
    out, pos = [], 0
    while pos < len(data):
        size, box_type = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", data, pos + 8)[0], 16
        assert size >= header and pos + size <= len(data)
        out.append((box_type, pos + header, pos + size))
        pos += size
    return out
