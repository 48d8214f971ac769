"""Live-view test harness: a real recorder (the supervisor, recording the built-in demo RTSP camera) and the real API
(uvicorn) over one runtime, so the API serves live view from the recorder of its own process, as ``nvr serve``."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import httpx
from sqlalchemy import select

from nvr.clock import iso
from nvr.demo.pattern import Pattern, encode_pattern
from nvr.models import AuditEvent
from nvr.recorder.supervisor import Supervisor
from nvr.runtime import Runtime
from tests.support.api_server import DAY_US, make_user, running_api
from tests.support.recording import FPS, GOP_S


def demo_pattern(cache_dir: Path) -> Pattern:
    return encode_pattern(
        width=320, height=180, fps=FPS, gop_seconds=GOP_S, seconds=2, bitrate=300_000, cache_dir=cache_dir
    )


@dataclass
class LiveSite:
    rt: Runtime
    url: str
    supervisor: Supervisor | None
    tokens: dict[str, str] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)

    def client(self, who: str | None = None, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)

    def user(self, username: str, roles: list[str]) -> int:
        self.ids[username], self.tokens[username] = make_user(self.rt, self.rt.clock, username, roles)
        return self.ids[username]

    def grant(self, approver: str, grantee: str, cameras: list[str], **over: Any) -> dict[str, Any]:
        now = self.rt.clock.now_us()
        body: dict[str, Any] = {
            "user_id": self.ids[grantee],
            "cameras": cameras,
            "actions": ["live"],
            "window": {"start": iso(now - 2 * DAY_US), "end": iso(now + DAY_US)},
            "valid_until": iso(now + 30 * DAY_US),
            "purpose": "watch the gate during the operation",
            "case_ref": "CASE-2026-077",
            "max_streams": 2,
        }
        body.update(over)
        with self.client(approver) as c:
            r = c.post("/api/v1/grants", json=body)
        assert r.status_code == 201, r.text
        return r.json()

    def events(self, action: str) -> list[AuditEvent]:
        with self.rt.db.session() as s:
            return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)))


def running_site(rt: Runtime, record: bool) -> Iterator[LiveSite]:
    sup = None
    if record:
        sup = Supervisor(rt.recorder_context(), sync_seconds=0.5)
        sup.start()
    try:
        with running_api(rt, rt.clock) as url:
            yield LiveSite(rt, url, sup)
    finally:
        if sup is not None:
            sup.stop()


def decode(data: bytes) -> list[av.VideoFrame]:
    """Every video frame of a (possibly cut-off) fragmented MP4: a live stream ends wherever it was stopped."""
    frames: list[av.VideoFrame] = []
    try:
        with av.open(io.BytesIO(data), format="mp4") as c:
            for frame in c.decode(video=0):
                frames.append(frame)
    except av.error.InvalidDataError:
        pass  # nothing usable yet, or the last fragment is cut off: the frames before it count
    return frames
