"""Where a segment lives inside a volume, derived from camera and time.

``<camera>/<YYYY>/<MM>/<DD>/<HH>/<start_us>.mp4`` (or ``.mov``). While being written the file is
``<start_us>.mp4.partial``
beside a ``<start_us>.json`` journal written first, which start-up recovery needs to register what a crash left.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from nvr.clock import to_datetime

# QuickTime only for cameras whose audio (G.711, PCM) MP4 cannot hold; same fragmented layout.
SUFFIXES = {"mp4": ".mp4", "mov": ".mov"}
PARTIAL_SUFFIX = ".partial"
JOURNAL_SUFFIX = ".json"


def segment_dir(camera_id: str, start_us: int) -> PurePosixPath:
    t = to_datetime(start_us)
    return PurePosixPath(camera_id, f"{t:%Y}", f"{t:%m}", f"{t:%d}", f"{t:%H}")


def stem_for(camera_id: str, start_us: int, attempt: int = 0) -> PurePosixPath:
    """A file is never overwritten: a second segment in the same microsecond (clock step back) gets ``-1``."""
    name = f"{start_us:016d}" + (f"-{attempt}" if attempt else "")
    return segment_dir(camera_id, start_us) / name
