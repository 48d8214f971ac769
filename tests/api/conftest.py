"""A real API server (uvicorn on a free port, in a thread) over a fresh database, with a clock the test moves."""

from __future__ import annotations

import functools
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from argon2 import PasswordHasher

from api import people
from api.app import create_app
from api.context import Services
from api.roles import validate_roles
from nvr.clock import FakeClock, iso
from nvr.models import User
from nvr.runtime import Runtime
from tests.support import footage

DAY_US = 86_400_000_000
PASSWORD = "correct horse battery staple"


@functools.cache
def _password_hash() -> str:
    return PasswordHasher().hash(PASSWORD)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Api:
    rt: Runtime
    clock: FakeClock
    url: str
    scratch: Path
    tokens: dict[str, str] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)

    def client(self, who: str | None = None, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kw)

    def user(self, username: str, roles: list[str], unit: str = "Unit A") -> int:
        """A user with a session token, written directly with one argon2 hash of PASSWORD made per test run
        (hashing costs ~0.1 s a user; creating users through the API and the CLI is tested on its own)."""
        now = self.clock.now_us()
        with self.rt.db.session() as s:
            u = User(
                username=username,
                full_name=username.title(),
                staff_number=f"S-{username}",
                unit=unit,
                roles=validate_roles(roles),
                state="active",
                password_hash=_password_hash(),
                created_us=now,
                updated_us=now,
            )
            s.add(u)
            s.flush()
            _, secret = people.issue_token(s, u, "session", None, now_us=now, expires_us=now + 60 * DAY_US)
            self.tokens[username] = secret
            self.ids[username] = u.id
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
    port = free_port()
    app = create_app(Services(rt.settings, rt.db, clock))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "API server did not start"
        time.sleep(0.02)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    yield Api(rt, clock, f"http://127.0.0.1:{port}", scratch)
    server.should_exit = True
    thread.join(timeout=10)
    rt.db.dispose()
