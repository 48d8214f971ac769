"""A real API server (uvicorn on a free port, in a thread) over a given runtime, and users with session tokens:
for the API tests' fixture and for tests that need the HTTP surface beside a running recorder."""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn
from argon2 import PasswordHasher
from fastapi import FastAPI

from api import people
from api.app import create_app
from api.context import Services
from api.roles import validate_roles
from nvr.clock import Clock
from nvr.models import User
from nvr.runtime import Runtime

DAY_US = 86_400_000_000
PASSWORD = "correct horse battery staple"


@functools.cache
def password_hash() -> str:
    """One argon2 hash of PASSWORD per test run (hashing costs ~0.1 s a user)."""
    return PasswordHasher().hash(PASSWORD)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_api(rt: Runtime, clock: Clock, apps: list[FastAPI] | None = None) -> Iterator[str]:
    """Serve the API over ``rt`` until the block ends; yields its base URL (and appends the app to ``apps``)."""
    port = free_port()
    app = create_app(Services(rt.settings, rt.db, clock))
    if apps is not None:
        apps.append(app)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "API server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def make_user(
    rt: Runtime, clock: Clock, username: str, roles: list[str], unit: str = "Unit A", *, auth_source: str = "local"
) -> tuple[int, str]:
    """A user written directly (creating users through the API and CLI is tested on its own); (id, token).
    ``auth_source="oidc"``: an identity-provider account, with no local password."""
    now = clock.now_us()
    with rt.db.session() as s:
        u = User(
            username=username,
            full_name=username.title(),
            staff_number=f"S-{username}",
            unit=unit,
            roles=validate_roles(roles),
            state="active",
            password_hash=password_hash() if auth_source == "local" else "",
            auth_source=auth_source,
            oidc_subject=None if auth_source == "local" else f"https://idp.test|{username}",
            created_us=now,
            updated_us=now,
        )
        s.add(u)
        s.flush()
        _, secret = people.issue_token(s, u, "session", None, now_us=now, expires_us=now + 60 * DAY_US)
        return u.id, secret
