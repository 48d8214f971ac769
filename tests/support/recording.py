"""Helpers for recorder tests: registering cameras, waiting, reading back segments and gaps."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import av
from sqlalchemy import select

from nvr import registry
from nvr.models import Gap, Segment, Volume
from nvr.runtime import Runtime

FPS = 25
GOP_S = 1


def add_camera(rt: Runtime, camera_id: str, url: str) -> None:
    with rt.db.session() as s:
        registry.add(
            s,
            camera_id,
            registry.CameraFields(name=camera_id, stream_url=url, managing_unit="Unit A"),
            actor="test",
            now_us=rt.clock.now_us(),
        )
        registry.transition(s, camera_id, "active", actor="test", now_us=rt.clock.now_us())


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def segments(rt: Runtime, camera_id: str) -> list[tuple[Segment, Path]]:
    with rt.db.session() as s:
        rows = s.execute(
            select(Segment, Volume.path)
            .join(Volume, Segment.volume_id == Volume.id)
            .where(Segment.camera_id == camera_id)
            .order_by(Segment.seq)
        ).all()
        return [(seg, Path(vp) / seg.rel_path) for seg, vp in rows]


def gaps(rt: Runtime, camera_id: str) -> list[Gap]:
    with rt.db.session() as s:
        return list(s.scalars(select(Gap).where(Gap.camera_id == camera_id).order_by(Gap.start_us)))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def decode_all(path: Path) -> tuple[int, bool]:
    """(decoded video frames, first frame is a keyframe) — decoding proves the file is usable footage."""
    frames = 0
    first_key = False
    with av.open(str(path)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i == 0:
                first_key = frame.key_frame
            frames += 1
    return frames, first_key
