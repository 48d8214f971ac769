"""The real OpenID Connect provider of the OIDC tests, started and driven from Python.

:class:`Provider` runs ``provider.js`` (panva's certified ``oidc-provider``, installed by scripts/install-system-deps
with ``npm ci`` from the committed package-lock.json) with the machine's Node.js on a free loopback port, waits for its
discovery document, and changes its accounts at run time through the provider's loopback admin route.
:func:`script_token` is what a script does to get a JWT access token for the API: the authorization-code flow with
PKCE at the provider, its login form filled in over HTTP. :meth:`Site.login` is the browser flow through this server's
``/auth/oidc/login`` and ``/auth/oidc/callback``, done with httpx instead of a browser.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx
import pytest

from nvr.config import Settings
from nvr.runtime import Runtime
from tests.support.api_server import free_port, running_api

HERE = Path(__file__).parent
AUDIENCE = "urn:nvr:api"
OTHER_AUDIENCE = "urn:other:api"
WEB_CLIENT = "nvr-web"
SCRIPT_CLIENT = "nvr-script"
SCRIPT_REDIRECT = "http://127.0.0.1:9/script-callback"  # never called: the script reads the code off the redirect
USER_PASSWORD = "provider password 42"
ROLE_MAP = {
    "nvr-admins": "admin",
    "nvr-approvers": "approver",
    "nvr-officers": "officer",
    "nvr-operators": "operator",
    "nvr-auditors": "auditor",
    "nvr-viewers": "viewer",
}


def _require_provider() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is needed for the OIDC provider (install it with scripts/install-system-deps)")
    if not (HERE / "node_modules" / "oidc-provider" / "package.json").is_file():
        pytest.fail(f"oidc-provider is not installed in {HERE} (scripts/install-system-deps runs npm ci there)")
    return node


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


@dataclass
class Provider:
    """One provider process. ``accounts`` maps the provider's subject (``sub``) to the account's fields."""

    workdir: Path
    redirect_uri: str
    access_token_ttl: int = 600
    kid: str = field(default_factory=lambda: f"key-{secrets.token_hex(4)}")
    port: int = field(default_factory=free_port)
    admin_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    web_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self, accounts: dict[str, Any]) -> dict[str, Any]:
        return {
            "port": self.port,
            "issuer": self.issuer,
            "kid": self.kid,
            "audiences": [AUDIENCE, OTHER_AUDIENCE],
            "access_token_ttl": self.access_token_ttl,
            "admin_secret": self.admin_secret,
            "accounts": accounts,
            "clients": [
                {  # this server: a confidential client, authorization code + PKCE, refresh tokens
                    "client_id": WEB_CLIENT,
                    "client_secret": self.web_secret,
                    "redirect_uris": [self.redirect_uri],
                    "grant_types": ["authorization_code", "refresh_token"],
                    "response_types": ["code"],
                    "token_endpoint_auth_method": "client_secret_basic",
                },
                {  # a script: a public client that asks for JWT access tokens for the API's audience
                    "client_id": SCRIPT_CLIENT,
                    "redirect_uris": [SCRIPT_REDIRECT],
                    "grant_types": ["authorization_code", "refresh_token"],
                    "response_types": ["code"],
                    "token_endpoint_auth_method": "none",
                },
            ],
        }

    def start(self, accounts: dict[str, Any] | None = None) -> Provider:
        node = _require_provider()
        cfg = self.workdir / f"provider-{self.port}-{self.kid}.json"
        cfg.write_text(json.dumps(self.config(accounts or {})))
        log = open(self.workdir / f"provider-{self.port}.log", "ab")  # noqa: SIM115 (kept open for the process)
        env = {k: v for k, v in os.environ.items() if not k.startswith("NODE_")}
        env["NODE_ENV"] = "test"
        self.proc = subprocess.Popen(
            [node, str(HERE / "provider.js"), str(cfg)], cwd=HERE, stdout=log, stderr=subprocess.STDOUT, env=env
        )
        log.close()
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"the OIDC provider exited with {self.proc.returncode}: {self.log_text()}")
            try:
                r = httpx.get(f"{self.issuer}/.well-known/openid-configuration", timeout=2)
                if r.status_code == 200 and r.json().get("issuer") == self.issuer:
                    return self
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"the OIDC provider did not start: {self.log_text()}"
            time.sleep(0.05)

    def log_text(self) -> str:
        path = self.workdir / f"provider-{self.port}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def restart(self, *, kid: str, accounts: dict[str, Any]) -> None:
        """The same issuer on the same port with a new signing key (and, being in memory, no grants or tokens)."""
        self.stop()
        self.kid = kid
        self.start(accounts)

    # --- the account store, changed while the provider runs -----------------------------------------------------

    def _admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        r = httpx.request(
            method,
            f"{self.issuer}/admin/{path}",
            json=body,
            headers={"x-admin-secret": self.admin_secret},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        return r.json()

    def put_account(self, sub: str, **fields: Any) -> None:
        self._admin("PUT", f"accounts/{sub}", {"password": USER_PASSWORD, **fields})

    def patch_account(self, sub: str, **fields: Any) -> None:
        self._admin("PATCH", f"accounts/{sub}", fields)

    def remove_account(self, sub: str) -> None:
        self._admin("DELETE", f"accounts/{sub}")

    def accounts(self) -> dict[str, Any]:
        return self._admin("GET", "accounts")

    def set_clock_ahead(self, seconds: float) -> None:
        """Make the provider's clock run ``seconds`` ahead of the real one (its tokens' iat, exp follow)."""
        self._admin("PUT", "clock", {"skew_seconds": seconds})

    def grants_issued(self) -> dict[str, int]:
        """How many tokens the token endpoint issued, by grant type, since the provider started."""
        return self._admin("GET", "grants")


def account(username: str, groups: list[str], *, unit: str = "Unit A", staff_number: str | None = None) -> dict:
    return {
        "username": username,
        "password": USER_PASSWORD,
        "name": username.replace(".", " ").title(),
        "staff_number": staff_number or f"P-{username}",
        "unit": unit,
        "groups": groups,
    }


_FORM = re.compile(r'<form method="post" action="([^"]+)"')


def _fill_login_form(client: httpx.Client, page: httpx.Response, username: str, password: str) -> httpx.Response:
    m = _FORM.search(page.text)
    assert page.status_code == 200 and m, f"no login form at {page.url}: {page.status_code} {page.text[:300]}"
    return client.post(urljoin(str(page.url), unescape(m.group(1))), data={"username": username, "password": password})


def _follow(client: httpx.Client, r: httpx.Response, stop_at: str) -> httpx.Response:
    """Follow redirects until one points at ``stop_at`` (returned unfollowed) or a page answers."""
    for _ in range(20):
        if not r.is_redirect:
            return r
        location = urljoin(str(r.url), r.headers["location"])
        if location.startswith(stop_at):
            return r
        r = client.get(location)
    raise AssertionError("too many redirects")


def script_token(
    provider: Provider, username: str, password: str = USER_PASSWORD, *, resource: str = AUDIENCE
) -> dict[str, Any]:
    """A script's login: authorization code + PKCE for the API's resource, the provider's form filled in over
    HTTP; returns the token endpoint's answer (``access_token`` is the JWT the script sends as a bearer token)."""
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    query = {
        "client_id": SCRIPT_CLIENT,
        "response_type": "code",
        "redirect_uri": SCRIPT_REDIRECT,
        "scope": "openid",
        "resource": resource,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": state,
    }
    with httpx.Client(timeout=10) as client:
        page = _follow(client, client.get(f"{provider.issuer}/auth?{urlencode(query)}"), SCRIPT_REDIRECT)
        r = _follow(client, _fill_login_form(client, page, username, password), SCRIPT_REDIRECT)
        assert r.is_redirect, f"the provider did not send the script back with a code: {r.status_code} {r.text[:300]}"
        params = parse_qs(urlsplit(r.headers["location"]).query)
        assert params.get("state") == [state], params
        assert "code" in params, params
        t = client.post(
            f"{provider.issuer}/token",
            data={
                "grant_type": "authorization_code",
                "code": params["code"][0],
                "redirect_uri": SCRIPT_REDIRECT,
                "client_id": SCRIPT_CLIENT,
                "code_verifier": verifier,
                "resource": resource,
            },
        )
    assert t.status_code == 200, t.text
    return t.json()


def provider_callback(
    client: httpx.Client, api_url: str, username: str, password: str = USER_PASSWORD, *, return_to: str | None = None
) -> str:
    """The browser flow up to the provider's redirect back: GET /auth/oidc/login, the provider's form filled in.
    Returns the callback URL the provider sends the browser to (not opened)."""
    start = f"{api_url}/api/v1/auth/oidc/login" + (f"?{urlencode({'return_to': return_to})}" if return_to else "")
    callback = f"{api_url}/api/v1/auth/oidc/callback"
    r = client.get(start)
    assert r.status_code == 303, r.text
    page = _follow(client, r, callback)
    r = _follow(client, _fill_login_form(client, page, username, password), callback)
    assert r.is_redirect, f"the provider did not send the browser back: {r.status_code} {r.text[:300]}"
    return urljoin(str(r.url), r.headers["location"])


class LiveClock:
    """Real time plus whatever the test adds with :meth:`advance`: the provider stamps its tokens with the real
    clock, so the server's clock must follow it (a FakeClock standing still would soon see tokens "from the
    future"), and a test still moves it on by hand to expire things."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offset_us = 0

    def now_us(self) -> int:
        with self._lock:
            return time.time_ns() // 1000 + self._offset_us

    def monotonic_us(self) -> int:
        with self._lock:
            return time.monotonic_ns() // 1000 + self._offset_us

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset_us += int(seconds * 1_000_000)


@dataclass
class Site:
    """A running API server whose identity provider is a running :class:`Provider`."""

    rt: Runtime
    clock: LiveClock
    url: str
    provider: Provider
    settings: Settings
    clients: list[httpx.Client] = field(default_factory=list)

    def login(self, username: str, *, return_to: str | None = None) -> tuple[httpx.Client, httpx.Response]:
        """The browser flow through this server with httpx keeping the cookies (GET /auth/oidc/login, the provider's
        form, the callback): the client, holding the session cookie, and the callback's answer. The client is closed
        when the site ends, also after a failure."""
        client = httpx.Client(timeout=10)
        self.clients.append(client)
        callback = provider_callback(client, self.url, username, return_to=return_to)
        return client, client.get(callback)


@contextlib.contextmanager
def oidc_site(
    settings_factory: Callable[..., Settings],
    workdir: Path,
    *,
    accounts: dict[str, Any] | None = None,
    recheck_seconds: float = 0.0,
    access_token_ttl: int = 600,
) -> Iterator[Site]:
    """The API over a fresh database, configured for a provider started on a free port. The provider must know
    the server's callback URL and the server the provider's: the provider's port is chosen first, the server
    started, then its callback URL set in the running server's settings and the provider started with it."""
    provider = Provider(workdir, redirect_uri="", access_token_ttl=access_token_ttl)
    settings = settings_factory(
        oidc_issuer=provider.issuer,
        oidc_client_id=WEB_CLIENT,
        oidc_client_secret=provider.web_secret,
        oidc_redirect_uri="http://127.0.0.1/set-below",
        oidc_audience=AUDIENCE,
        oidc_scopes=["openid", "profile", "nvr"],
        oidc_role_map=ROLE_MAP,
        oidc_recheck_seconds=recheck_seconds,
    )
    clock = LiveClock()
    rt = Runtime.open(settings, clock=clock)
    rt.init_default_volume()
    try:
        with running_api(rt, clock) as url:
            settings.oidc_redirect_uri = provider.redirect_uri = f"{url}/api/v1/auth/oidc/callback"
            provider.start(accounts)
            site = Site(rt, clock, url, provider, settings)
            try:
                yield site
            finally:
                for client in site.clients:
                    client.close()
                provider.stop()
    finally:
        rt.db.dispose()
