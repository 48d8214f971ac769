"""A real browser signs in through the real identity provider: headless Chromium (Debian's chromium and
chromium-driver, started exactly as tests/api/test_browser.py starts it, whose fixture this uses) opens this server's
``/api/v1/auth/oidc/login``, fills in the provider's sign-in form, comes back through the callback and lands signed
in; the session cookie then carries API calls. Without Chromium the test is skipped, unless ``REQUIRE_BROWSER=1`` or
``REQUIRE_GSTREAMER=1`` (set in CI) is set, in which case it fails."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from selenium.webdriver.common.by import By
from sqlalchemy import select

from api import oidc
from nvr.models import AuditEvent
from tests.api.test_browser import browser  # noqa: F401  (the headless Chromium fixture, same flags)
from tests.support.oidc.harness import USER_PASSWORD, Site, account, oidc_site

FETCH = """
const [path, method, headers, done] = arguments;
fetch(path, {method: method, headers: headers, credentials: 'same-origin'})
    .then(async r => done({status: r.status, body: await r.text()}))
    .catch(e => done({status: 0, body: String(e)}));
"""


@pytest.fixture
def site(settings_factory, tmp_path) -> Iterator[Site]:
    accounts = {"acc-91": account("vera.k", ["nvr-officers", "nvr-approvers"], unit="District 7", staff_number="P-7")}
    with oidc_site(settings_factory, tmp_path, accounts=accounts) as s:
        yield s


def _wait(predicate, what: str, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_headless_chromium_signs_in_through_the_provider_and_uses_the_session(site, browser) -> None:  # noqa: F811
    browser.get(f"{site.url}/api/v1/auth/oidc/login?return_to=/api/v1/me")
    # The provider's own sign-in page, on the provider's origin.
    _wait(lambda: browser.current_url.startswith(site.provider.issuer + "/interaction/"), "the provider's form")
    browser.find_element(By.ID, "username").send_keys("vera.k")
    browser.find_element(By.ID, "password").send_keys(USER_PASSWORD)
    browser.find_element(By.ID, "sign-in").click()
    # Back through the callback, then on to return_to: /api/v1/me answers as the signed-in person.
    _wait(lambda: browser.current_url == f"{site.url}/api/v1/me", "the return_to page")
    me = json.loads(_wait(lambda: browser.find_element(By.TAG_NAME, "body").text, "the /me answer"))
    assert (me["username"], me["full_name"], me["staff_number"], me["unit"]) == (
        "vera.k",
        "Vera K",
        "P-7",
        "District 7",
    )
    assert (me["roles"], me["auth_source"]) == (["approver", "officer"], "oidc")

    # The session is an HttpOnly cookie: page scripts cannot read it, but the browser sends it.
    assert oidc.SESSION_COOKIE not in browser.execute_script("return document.cookie")
    cookie = browser.get_cookie(oidc.SESSION_COOKIE)
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/api/v1"
    r = browser.execute_async_script(FETCH, "/api/v1/tokens", "GET", {})
    assert r["status"] == 200 and [t["kind"] for t in json.loads(r["body"])["tokens"]] == ["session"]
    # A change made with the cookie needs the CSRF header; with it, logging out ends the session.
    r = browser.execute_async_script(FETCH, "/api/v1/auth/logout", "POST", {})
    assert (r["status"], json.loads(r["body"])["error"]["code"]) == (403, "csrf_header_required")
    r = browser.execute_async_script(FETCH, "/api/v1/auth/logout", "POST", {"X-NVR-CSRF": "1"})
    assert r["status"] == 204, r
    r = browser.execute_async_script(FETCH, "/api/v1/me", "GET", {})
    assert (r["status"], json.loads(r["body"])["error"]["code"]) == (401, "token_revoked")

    user_agent = browser.execute_script("return navigator.userAgent")
    with site.rt.db.session() as s:
        (login,) = s.scalars(select(AuditEvent).where(AuditEvent.action == "auth.oidc.login"))
    assert (login.outcome, login.actor_name, login.user_agent) == ("allowed", "Vera K (vera.k)", user_agent)
    assert "Chrome" in user_agent
