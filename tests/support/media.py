"""Checking media independently of the code under test: the system's ffprobe (another FFmpeg build than PyAV's)
a walk over an MP4's top-level boxes, and the test tone the audio tracks of test clips carry."""

from __future__ import annotations

import json
import math
import struct
import subprocess
from array import array
from pathlib import Path
from typing import Any

import av


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


def mux_tone(out: Any, stream: Any, audio_t: int, until: int, rate: int) -> tuple[int, int]:
    """Encode a 440 Hz mono tone into ``stream`` (AAC, planar float) from sample ``audio_t`` until at least sample
    ``until`` and mux it into ``out``, so audio keeps in step with the video; returns (next sample, packets muxed)."""
    size = stream.codec_context.frame_size or 1024
    packets = 0
    while audio_t < until:
        af = av.AudioFrame(format="fltp", layout="mono", samples=size)
        af.sample_rate = rate
        af.planes[0].update(
            array("f", (0.3 * math.sin(2 * math.pi * 440 * (audio_t + j) / rate) for j in range(size))).tobytes()
        )
        af.pts = audio_t
        audio_t += size
        for packet in stream.encode(af):
            out.mux(packet)
            packets += 1
    return audio_t, packets
