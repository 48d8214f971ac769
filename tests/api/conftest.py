"""A real API server (uvicorn on a free port, in a thread) over a fresh database, with a clock the test moves."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from nvr.clock import FakeClock, iso
from nvr.runtime import Runtime
from tests.support import footage
from tests.support.api_server import DAY_US, PASSWORD, make_user, running_api

__all__ = ["DAY_US", "PASSWORD", "Api"]


@dataclass
class Api:
    rt: Runtime
    clock: FakeClock
    url: str
    scratch: Path
    tokens: dict[str, str] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)
    apps: list[Any] = field(default_factory=list)

    def app_state(self) -> Any:
        """The running app's state (``export_runner``…), for tests that must hold a background part still."""
        return self.apps[0].state

    def client(self, who: str | None = None, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)

    def user(self, username: str, roles: list[str], unit: str = "Unit A") -> int:
        """A user with a session token, written directly with one argon2 hash of PASSWORD made per test run
        (hashing costs ~0.1 s a user; creating users through the API and the CLI is tested on its own)."""
        self.ids[username], self.tokens[username] = make_user(self.rt, self.clock, username, roles, unit)
        return self.ids[username]

    def grant(self, approver: str, grantee: str, cameras: list[str], **over: Any) -> dict[str, Any]:
        now = self.clock.now_us()
        body: dict[str, Any] = {
            "user_id": self.ids[grantee],
            "cameras": cameras,
            "actions": ["playback"],
            "window": {"start": iso(now - 2 * DAY_US), "end": iso(now + DAY_US)},
            "valid_until": iso(now + 30 * DAY_US),
            "purpose": "investigation of incident 42",
            "case_ref": "CASE-2026-042",
            "max_streams": 2,
        }
        body.update(over)
        with self.client(approver) as c:
            r = c.post("/api/v1/grants", json=body)
        assert r.status_code == 201, r.text
        return r.json()

    def camera(
        self, camera_id: str, segments: int = 0, unit: str = "Unit A", share_class: str = "authorized"
    ) -> list[int]:
        footage.add_camera(self.rt, camera_id, unit=unit, share_class=share_class)
        if not segments:
            return []
        return footage.add_segments(self.rt, camera_id, self.clock.now_us() - DAY_US, segments)


@pytest.fixture
def api(settings_factory, tmp_path: Path) -> Iterator[Api]:
    clock = FakeClock(start_us=time.time_ns() // 1000)
    rt = Runtime.open(settings_factory(), clock=clock)
    rt.init_default_volume()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    apps: list[Any] = []
    with running_api(rt, clock, apps) as url:
        yield Api(rt, clock, url, scratch, apps=apps)
    rt.db.dispose()
