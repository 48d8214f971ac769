"""Unified identity login against a real OpenID Connect provider (panva's certified oidc-provider, run with Node.js
by tests/support/oidc/harness.py): a script's JWT access token, the browser flow driven over HTTP, claim mapping,
what is refused and with which code, and an account removed or disabled at the provider or here being refused on
the next request. The headless-browser run of the same flow is tests/api/test_oidc_browser.py."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import func, select

from api import oidc
from nvr.clock import iso
from nvr.models import AuditEvent, OidcLink, Token, User
from tests.support import footage
from tests.support.api_server import DAY_US, PASSWORD, make_user
from tests.support.oidc.harness import (
    AUDIENCE,
    OTHER_AUDIENCE,
    Provider,
    Site,
    account,
    oidc_site,
    provider_callback,
    script_token,
)

OLGA = "acc-7f3a"  # the provider's subject for olga: not her user name


@pytest.fixture
def site(settings_factory, tmp_path) -> Iterator[Site]:
    accounts = {OLGA: account("olga", ["nvr-officers", "staff"], unit="District 3", staff_number="P-1001")}
    with oidc_site(settings_factory, tmp_path, accounts=accounts) as s:
        yield s


def _get(site: Site, token: str, path: str = "/api/v1/me") -> httpx.Response:
    return httpx.get(site.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _code(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"]


def _events(site: Site, action: str) -> list[AuditEvent]:
    with site.rt.db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)))


def _signed_in(site: Site, username: str = "olga") -> httpx.Client:
    client, page = site.login(username)
    assert page.status_code == 200, page.text
    return client


def _b64(part: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()


def _parts(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    h, p, sig = token.split(".")
    pad = lambda x: x + "=" * (-len(x) % 4)  # noqa: E731
    return json.loads(base64.urlsafe_b64decode(pad(h))), json.loads(base64.urlsafe_b64decode(pad(p))), sig


# --- a script's JWT ----------------------------------------------------------------------------------------------
def test_a_script_calls_the_api_with_the_providers_jwt_as_the_mapped_user(site) -> None:
    browser = _signed_in(site)  # the person signs in once through the browser flow
    assert browser.get(site.url + "/api/v1/me").json()["username"] == "olga"
    tokens = script_token(site.provider, "olga")
    header, claims, _ = _parts(tokens["access_token"])
    assert header["typ"] == "at+jwt" and claims["aud"] == AUDIENCE and claims["sub"] == OLGA

    r = _get(site, tokens["access_token"])
    assert r.status_code == 200, r.text
    me = r.json()
    assert (me["username"], me["full_name"], me["staff_number"], me["unit"]) == ("olga", "Olga", "P-1001", "District 3")
    assert (me["roles"], me["auth_source"]) == (["officer"], "oidc")  # "staff" maps to nothing
    assert _get(site, tokens["access_token"]).status_code == 200
    with site.rt.db.session() as s:
        u = s.scalar(select(User).where(User.username == "olga"))
        assert u is not None and u.oidc_subject == f"{site.provider.issuer}|{OLGA}" and u.password_hash == ""
        (jwt_row,) = s.scalars(select(Token).where(Token.kind == "oidc"))
        assert jwt_row.secret_hash == oidc.people.hash_secret(tokens["access_token"])
        assert jwt_row.expires_us == claims["exp"] * 1_000_000 and jwt_row.user_id == u.id
    (created,) = _events(site, "user.create")
    assert (created.actor_name, created.reason) == ("identity provider", "roles=officer; from the identity provider")
    (first_use,) = _events(site, "auth.oidc.token")  # once per JWT, not once per request
    assert (first_use.outcome, first_use.actor_id, first_use.object_id) == ("allowed", u.id, f"token:{jwt_row.id}")
    # No local password: the provider's password does not open a local login.
    r = httpx.post(site.url + "/api/v1/auth/login", json={"username": "olga", "password": "provider password 42"})
    assert _code(r) == (401, "login_failed")


def test_a_script_jwt_is_a_principal_like_any_other_and_grants_decide_footage(site) -> None:
    footage.add_camera(site.rt, "cam-a")
    starts = footage.add_segments(site.rt, "cam-a", site.clock.now_us() - DAY_US, 3)
    _signed_in(site)
    token = script_token(site.provider, "olga")["access_token"]
    body = {"start": iso(starts[0]), "end": iso(starts[2]), "purpose": "script check"}
    r = httpx.post(
        site.url + "/api/v1/cameras/cam-a/playback-tickets", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert _code(r) == (404, "camera_not_found")  # no grant: the camera is not even there for her
    _, boss = make_user(site.rt, site.clock, "boss", ["approver"])
    with site.rt.db.session() as s:
        olga = s.scalar(select(User.id).where(User.username == "olga"))
    now = site.clock.now_us()
    grant = {
        "user_id": olga,
        "cameras": ["cam-a"],
        "actions": ["playback"],
        "window": {"start": iso(now - 2 * DAY_US), "end": iso(now + DAY_US)},
        "valid_until": iso(now + 30 * DAY_US),
        "purpose": "investigation of incident 42",
        "case_ref": "CASE-2026-042",
        "max_streams": 2,
    }
    g = httpx.post(site.url + "/api/v1/grants", json=grant, headers={"Authorization": f"Bearer {boss}"})
    assert g.status_code == 201, g.text
    t = httpx.post(
        site.url + "/api/v1/cameras/cam-a/playback-tickets", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert t.status_code == 201, t.text
    played = httpx.get(site.url + t.json()["url"], timeout=30)
    assert played.status_code == 200 and played.headers["content-type"] == "video/mp4"
    (start,) = _events(site, "playback.start")
    assert (start.actor_id, start.outcome, start.camera_id) == (olga, "allowed", "cam-a")


def test_claims_follow_the_provider_on_the_next_request(site) -> None:
    _signed_in(site)
    token = script_token(site.provider, "olga")["access_token"]
    assert _get(site, token).json()["roles"] == ["officer"]
    site.provider.patch_account(OLGA, groups=["nvr-officers", "nvr-approvers"], unit="District 4", name="Olga Berg")
    me = _get(site, token).json()  # the same JWT: the provider's current claims come with the liveness check
    assert (me["roles"], me["unit"], me["full_name"]) == (["approver", "officer"], "District 4", "Olga Berg")
    (roles,) = _events(site, "user.roles")
    assert (roles.actor_name, roles.reason) == (
        "identity provider",
        "roles=approver,officer; from the identity provider",
    )
    (update,) = _events(site, "user.update")
    assert update.reason == "full_name=Olga Berg; unit=District 4; from the identity provider"
    site.provider.patch_account(OLGA, groups=["nvr-approvers"])
    assert _get(site, token).json()["roles"] == ["approver"]  # taking a role away needs nobody either


def test_bad_tokens_are_refused_401_with_stable_codes(site, tmp_path) -> None:
    _signed_in(site)
    tokens = script_token(site.provider, "olga")
    good = tokens["access_token"]
    header, claims, sig = _parts(good)

    def refused(token: str) -> tuple[int, str]:
        r = _get(site, token)
        assert r.headers["www-authenticate"].startswith('Bearer realm="nvr", error="invalid_token"'), r.headers
        return _code(r)

    # Forged: the payload changed under the provider's signature; a key of our own under the provider's kid.
    forged = f"{_b64(header)}.{_b64({**claims, 'sub': 'acc-someone-else'})}.{sig}"
    assert refused(forged) == (401, "token_invalid")
    mine = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert refused(jwt.encode(claims, mine, algorithm="RS256", headers={"kid": header["kid"], "typ": "at+jwt"})) == (
        401,
        "token_invalid",
    )
    # Algorithms: "none", and HMAC with the provider's public key as the secret, are never accepted.
    unsigned = f"{_b64({'alg': 'none', 'typ': 'at+jwt'})}.{_b64(claims)}."
    assert refused(unsigned) == (401, "token_invalid")
    public_pem = jwt.PyJWK(httpx.get(site.provider.issuer + "/jwks").json()["keys"][0]).key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'at+jwt', 'kid': header['kid']})}.{_b64(claims)}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    assert refused(f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}") == (401, "token_invalid")
    assert refused("a.b.c") == (401, "token_invalid")
    # The ID token is no access token (typ), even though the provider signed it.
    assert refused(tokens["id_token"]) == (401, "token_invalid")
    # A real token of this provider for another API, and one of another provider.
    assert refused(script_token(site.provider, "olga", resource=OTHER_AUDIENCE)["access_token"]) == (
        401,
        "token_audience_invalid",
    )
    other = Provider(tmp_path, redirect_uri="http://127.0.0.1:1/cb").start({OLGA: account("olga", ["nvr-officers"])})
    try:
        assert refused(script_token(other, "olga")["access_token"]) == (401, "token_issuer_invalid")
    finally:
        other.stop()
    assert _get(site, good).status_code == 200  # none of that disturbed the real one
    # Expired: the server's clock passes exp.
    site.clock.advance(claims["exp"] - time.time() + 1)
    assert refused(good) == (401, "token_expired")
    # None of these became a principal: no first-use event but the good token's.
    assert len(_events(site, "auth.oidc.token")) == 1


def test_a_rotated_signing_key_is_fetched_at_once_and_a_retired_one_refused(site) -> None:
    _signed_in(site)
    old = script_token(site.provider, "olga")["access_token"]
    assert _get(site, old).status_code == 200
    site.provider.restart(kid="key-rotated", accounts=site.provider.accounts())  # same issuer, a new key only
    # The new ID token names a kid the server has not seen: it fetches the JWKS again and signs the person in.
    _signed_in(site)
    new = script_token(site.provider, "olga")["access_token"]
    assert _parts(new)[0]["kid"] == "key-rotated" and _get(site, new).status_code == 200
    assert _code(_get(site, old)) == (401, "token_invalid")  # its key is no longer published


def test_a_token_from_the_future_is_refused(site) -> None:
    _signed_in(site)
    site.provider.set_clock_ahead(oidc.LEEWAY_SECONDS + 15)  # the provider's clock runs ahead by more than the leeway
    early = script_token(site.provider, "olga")["access_token"]
    assert _code(_get(site, early)) == (401, "token_not_yet_valid")
    site.provider.set_clock_ahead(oidc.LEEWAY_SECONDS - 15)  # within the leeway
    assert _get(site, script_token(site.provider, "olga")["access_token"]).status_code == 200


def test_a_jwt_of_an_account_that_never_signed_in_here_is_refused(site) -> None:
    token = script_token(site.provider, "olga")["access_token"]
    assert _code(_get(site, token)) == (401, "oidc_account_unlinked")
    with site.rt.db.session() as s:
        assert s.scalar(select(func.count()).select_from(User)) == 0


# --- refused on the next request ---------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["removed", "disabled"])
def test_an_account_removed_or_disabled_at_the_provider_is_refused_on_the_next_request(site, how) -> None:
    browser = _signed_in(site)
    token = script_token(site.provider, "olga")["access_token"]
    assert browser.get(site.url + "/api/v1/me").status_code == 200
    assert _get(site, token).status_code == 200
    if how == "removed":
        site.provider.remove_account(OLGA)
    else:
        site.provider.patch_account(OLGA, disabled=True)
    assert _code(_get(site, token)) == (401, "oidc_account_inactive")
    r = browser.get(site.url + "/api/v1/me")
    assert r.status_code == 401 and r.json()["error"]["code"] in ("token_revoked", "oidc_account_inactive")
    (ended,) = _events(site, "auth.oidc.inactive")
    assert ended.actor_name == "identity provider" and "removed, disabled" in ended.reason
    with site.rt.db.session() as s:
        link = s.scalar(select(OidcLink))
        assert link is not None and link.state == "dead"
        assert s.scalar(select(func.count()).select_from(Token).where(Token.revoked_us.is_(None))) == 0
    # Signing in again at the provider fails while the account is gone there ...
    with pytest.raises(AssertionError, match="did not send the browser back"):
        site.login("olga")
    # ... and once it is back, a new sign-in links it again; the old JWT stays revoked.
    site.provider.put_account(OLGA, **account("olga", ["nvr-officers"], unit="District 3", staff_number="P-1001"))
    _signed_in(site)
    assert _code(_get(site, token)) == (401, "token_revoked")
    assert _get(site, script_token(site.provider, "olga")["access_token"]).status_code == 200


def test_a_locally_disabled_identity_provider_account_is_refused(site) -> None:
    browser = _signed_in(site)
    token = script_token(site.provider, "olga")["access_token"]
    assert _get(site, token).status_code == 200
    with site.rt.db.session() as s:
        olga = s.scalar(select(User.id).where(User.username == "olga"))
    _, chief = make_user(site.rt, site.clock, "chief", ["admin"])
    r = httpx.post(f"{site.url}/api/v1/users/{olga}/disable", headers={"Authorization": f"Bearer {chief}"})
    assert r.status_code == 200, r.text
    assert _code(_get(site, token)) == (401, "user_disabled")
    assert _code(browser.get(site.url + "/api/v1/me"))[0] == 401
    # Signing in through the provider again does not get around it, and is audited as refused.
    _, page = site.login("olga")
    assert _code(page) == (401, "user_disabled")
    refused = [e for e in _events(site, "auth.oidc.login") if e.outcome == "denied"]
    assert [(e.actor_id, e.reason) for e in refused] == [(olga, "user_disabled")]
    # The local break-glass account still signs in with its password.
    r = httpx.post(site.url + "/api/v1/auth/login", json={"username": "chief", "password": PASSWORD})
    assert r.status_code == 201, r.text


def test_an_account_checked_within_the_recheck_window_is_trusted_until_it_ends(settings_factory, tmp_path) -> None:
    accounts = {OLGA: account("olga", ["nvr-officers"])}
    with oidc_site(settings_factory, tmp_path, accounts=accounts, recheck_seconds=60) as site:
        _signed_in(site)
        token = script_token(site.provider, "olga")["access_token"]
        assert _get(site, token).status_code == 200
        site.provider.remove_account(OLGA)
        assert _get(site, token).status_code == 200  # the provider vouched for it less than 60 s ago
        site.clock.advance(61)
        assert _code(_get(site, token)) == (401, "oidc_account_inactive")


def test_the_links_access_token_is_renewed_once_for_parallel_requests(settings_factory, tmp_path) -> None:
    accounts = {OLGA: account("olga", ["nvr-officers"])}
    with oidc_site(settings_factory, tmp_path, accounts=accounts, access_token_ttl=2) as site:
        browser = _signed_in(site)
        with site.rt.db.session() as s:
            first = s.scalar(select(OidcLink))
            assert first is not None and first.refresh_token
        assert site.provider.grants_issued() == {"authorization_code": 1}
        time.sleep(2.5)  # the provider's access token of the link has expired (the provider's own clock)
        session = browser.cookies.get(oidc.SESSION_COOKIE, domain="127.0.0.1")
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda _: _get(site, session).status_code, range(20)))
        assert answers == [200] * 20
        assert site.provider.grants_issued() == {"authorization_code": 1, "refresh_token": 1}  # one renewal for all
        with site.rt.db.session() as s:
            renewed = s.scalar(select(OidcLink))
            assert renewed is not None and renewed.state == "live" and renewed.refreshing_us is None
            assert renewed.access_token != first.access_token
        assert browser.get(site.url + "/api/v1/me").status_code == 200


# --- the browser flow, over HTTP ---------------------------------------------------------------------------------
def test_the_browser_flow_sets_an_httponly_strict_cookie_and_audits_the_login(site) -> None:
    client, page = site.login("olga", return_to="/api/v1/me")
    assert page.status_code == 200 and "Signed in as Olga (olga)" in page.text
    assert "location.replace" in page.text and 'href="/api/v1/me"' in page.text
    cookie = next(c for c in page.headers.get_list("set-cookie") if c.startswith(oidc.SESSION_COOKIE + "="))
    attrs = {a.strip().lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/api/v1"} <= attrs and "secure" not in attrs  # plain http here
    me = client.get(site.url + "/api/v1/me")
    assert me.status_code == 200 and me.json()["staff_number"] == "P-1001"
    # Changing something with the cookie alone needs the CSRF header.
    assert _code(client.post(site.url + "/api/v1/auth/logout")) == (403, "csrf_header_required")
    assert client.post(site.url + "/api/v1/auth/logout", headers={oidc.CSRF_HEADER: "1"}).status_code == 204
    assert _code(client.get(site.url + "/api/v1/me")) == (401, "token_revoked")
    (login,) = _events(site, "auth.oidc.login")
    assert (login.outcome, login.actor_name, login.actor_roles) == ("allowed", "Olga (olga)", "officer")
    assert login.reason == f"subject={site.provider.issuer}|{OLGA}" and login.object_id.startswith("token:")


def test_the_login_state_is_single_use_browser_bound_and_expiring(site) -> None:
    def provider_redirect(client: httpx.Client) -> str:
        return provider_callback(client, site.url, "olga")

    with httpx.Client(timeout=10) as client:
        callback = provider_redirect(client)
        assert client.get(callback).status_code == 200
        assert _code(client.get(callback)) == (401, "oidc_state_invalid")  # replayed
    with httpx.Client(timeout=10) as victim, httpx.Client(timeout=10) as attacker:
        callback = provider_redirect(attacker)  # a callback link sent to someone else: not their browser's login
        assert _code(victim.get(callback)) == (401, "oidc_state_invalid")
        assert attacker.get(callback).status_code == 200
    with httpx.Client(timeout=10) as client:
        callback = provider_redirect(client)
        site.clock.advance(oidc.LOGIN_STATE_SECONDS + 1)
        assert _code(client.get(callback)) == (401, "oidc_state_invalid")


def test_bad_login_requests_get_stable_codes(site) -> None:
    with httpx.Client(base_url=site.url, timeout=10) as c:
        for bad in ("//evil.example/", "https://evil.example/", "/\\evil", "relative", "/a b"):
            r = c.get("/api/v1/auth/oidc/login", params={"return_to": bad})
            assert _code(r) == (422, "return_to_invalid"), bad
        assert _code(c.get("/api/v1/auth/oidc/callback")) == (401, "oidc_state_invalid")
        assert _code(c.get("/api/v1/auth/oidc/callback", params={"state": "x", "code": "y"})) == (
            401,
            "oidc_state_invalid",
        )
        for _ in range(oidc.MAX_PENDING_PER_ADDR):
            assert c.get("/api/v1/auth/oidc/login").status_code == 303
        assert _code(c.get("/api/v1/auth/oidc/login")) == (429, "oidc_logins_pending")


def test_a_role_mapping_that_breaks_separation_of_duties_refuses_the_login_audited(site) -> None:
    site.provider.put_account("acc-ada", **account("ada", ["nvr-admins", "nvr-approvers"]))
    _, page = site.login("ada")
    assert _code(page) == (403, "role_conflict")
    with site.rt.db.session() as s:
        assert s.scalar(select(User).where(User.username == "ada")) is None
    (refused,) = _events(site, "auth.oidc.login")
    assert (refused.outcome, refused.reason, refused.actor_id) == ("denied", "role_conflict", None)
    assert refused.actor_name == "Ada (ada)" and refused.object_id == f"oidc:{site.provider.issuer}|acc-ada"
    # A mapping that gives no role at all is refused too.
    site.provider.put_account("acc-nil", **account("nil", ["staff"]))
    _, page = site.login("nil")
    assert _code(page) == (403, "oidc_no_role")
    # An existing user whose groups come to break it is refused on the next request, and keeps the roles it had.
    _signed_in(site)
    token = script_token(site.provider, "olga")["access_token"]
    site.provider.patch_account(OLGA, groups=["nvr-admins", "nvr-auditors"])
    assert _code(_get(site, token)) == (403, "role_conflict")
    with site.rt.db.session() as s:
        assert s.scalar(select(User.roles).where(User.username == "olga")) == "officer"


def test_a_provider_account_cannot_take_over_a_local_account(site) -> None:
    make_user(site.rt, site.clock, "olga", ["viewer"])
    _, page = site.login("olga")
    assert _code(page) == (409, "user_exists")
    with site.rt.db.session() as s:
        u = s.scalar(select(User).where(User.username == "olga"))
        assert u is not None and u.auth_source == "local" and u.oidc_subject is None


def test_over_https_the_session_cookie_is_a_host_only_secure_cookie(settings_factory) -> None:
    https = settings_factory(oidc_redirect_uri="https://nvr.example/api/v1/auth/oidc/callback")
    assert oidc.cookies_secure(https) and oidc.session_cookie_name(https) == ("__Host-nvr_session", "/")
    plain = settings_factory(oidc_redirect_uri="http://127.0.0.1:8080/api/v1/auth/oidc/callback")
    assert not oidc.cookies_secure(plain) and oidc.session_cookie_name(plain) == ("nvr_session", "/api/v1")


def test_without_a_provider_the_oidc_endpoints_and_jwts_are_refused(api) -> None:
    api.user("alice", ["operator"])
    with api.client() as c:
        assert _code(c.get("/api/v1/auth/oidc/login")) == (404, "oidc_not_configured")
        assert _code(c.get("/api/v1/auth/oidc/callback", params={"state": "x"})) == (404, "oidc_not_configured")
        header = _b64({"alg": "RS256", "typ": "at+jwt"})
        r = c.get("/api/v1/me", headers={"Authorization": f"Bearer {header}.{_b64({'sub': 'x'})}.sig"})
        assert _code(r) == (401, "token_invalid")
    with api.client("alice") as c:  # local accounts are untouched by all this
        assert c.get("/api/v1/me").status_code == 200
