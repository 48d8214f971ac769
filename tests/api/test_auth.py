"""People and credentials: login, bearer tokens, personal tokens, disabling, and the 401s a client can meet."""

from __future__ import annotations

from sqlalchemy import select

from nvr.models import Token, User
from tests.api.conftest import DAY_US, PASSWORD


def test_unauthenticated_requests_get_401_with_a_stable_code(api) -> None:
    with api.client() as c:
        r = c.get("/api/v1/cameras")
        assert r.status_code == 401
        assert r.json() == {"error": {"code": "auth_required", "message": r.json()["error"]["message"]}}
        assert r.headers["www-authenticate"].startswith("Bearer") and r.headers["x-content-type-options"] == "nosniff"
        forged = c.get("/api/v1/cameras", headers={"Authorization": "Bearer nvrs_forged"})
        assert (forged.status_code, forged.json()["error"]["code"]) == (401, "token_invalid")
        basic = c.get("/api/v1/cameras", headers={"Authorization": "Basic YWRtaW46YWRtaW4="})
        assert (basic.status_code, basic.json()["error"]["code"]) == (401, "token_invalid")


def test_login_gives_a_hashed_expiring_session_token_and_logout_revokes_it(api) -> None:
    api.user("alice", ["operator"])
    with api.client() as c:
        wrong = c.post("/api/v1/auth/login", json={"username": "alice", "password": "nope nope nope"})
        unknown = c.post("/api/v1/auth/login", json={"username": "mallory", "password": PASSWORD})
        assert wrong.json()["error"]["code"] == unknown.json()["error"]["code"] == "login_failed"
        assert wrong.status_code == unknown.status_code == 401
        r = c.post("/api/v1/auth/login", json={"username": "alice", "password": PASSWORD})
        assert r.status_code == 201, r.text
        token = r.json()["token"]
    with api.rt.db.session() as s:
        stored = [t.secret_hash for t in s.scalars(select(Token))]
        pw = s.scalar(select(User.password_hash).where(User.username == "alice"))
    assert token not in stored and all(len(h) == 64 for h in stored)
    assert pw.startswith("$argon2id$") and PASSWORD not in pw
    with api.client() as c:
        auth = {"Authorization": f"Bearer {token}"}
        assert c.get("/api/v1/me", headers=auth).json()["username"] == "alice"
        assert c.post("/api/v1/auth/logout", headers=auth).status_code == 204
        r = c.get("/api/v1/me", headers=auth)
        assert (r.status_code, r.json()["error"]["code"]) == (401, "token_revoked")


def test_session_tokens_expire_by_the_clock(api) -> None:
    api.user("alice", ["operator"])
    with api.client("alice") as c:
        assert c.get("/api/v1/me").status_code == 200
        api.clock.advance(60 * DAY_US / 1e6 + 1)
        r = c.get("/api/v1/me")
        assert (r.status_code, r.json()["error"]["code"]) == (401, "token_expired")


def test_personal_tokens_are_shown_once_limited_to_a_year_and_revocable(api) -> None:
    api.user("alice", ["operator"])
    with api.client("alice") as c:
        too_long = c.post("/api/v1/tokens", json={"name": "script", "expires_in_days": 400})
        assert too_long.status_code == 422
        r = c.post("/api/v1/tokens", json={"name": "script", "expires_in_days": 30})
        assert r.status_code == 201
        secret, token_id = r.json()["token"], r.json()["id"]
        listed = c.get("/api/v1/tokens").json()["tokens"]
        assert all("token" not in t for t in listed) and any(t["id"] == token_id for t in listed)
    with api.client() as c:
        auth = {"Authorization": f"Bearer {secret}"}
        assert c.get("/api/v1/me", headers=auth).status_code == 200
        with api.client("alice") as owner:
            assert owner.delete(f"/api/v1/tokens/{token_id}").status_code == 204
        assert c.get("/api/v1/me", headers=auth).json()["error"]["code"] == "token_revoked"


def test_a_disabled_user_is_stopped_at_the_next_request(api) -> None:
    api.user("root", ["admin"])
    uid = api.user("alice", ["operator"])
    with api.client("alice") as alice, api.client("root") as root:
        assert alice.get("/api/v1/me").status_code == 200
        assert root.patch(f"/api/v1/users/{uid}", json={"state": "disabled"}).status_code == 200
        r = alice.get("/api/v1/me")
        assert (r.status_code, r.json()["error"]["code"]) == (401, "user_disabled")
        login = alice.post("/api/v1/auth/login", json={"username": "alice", "password": PASSWORD})
        assert login.status_code == 401


def test_the_last_admin_cannot_be_disabled(api) -> None:
    uid = api.user("root", ["admin"])
    with api.client("root") as c:
        r = c.patch(f"/api/v1/users/{uid}", json={"state": "disabled"})
        assert (r.status_code, r.json()["error"]["code"]) == (409, "last_admin")
        assert c.get("/api/v1/me").status_code == 200


def test_weak_passwords_and_bad_roles_are_refused(api) -> None:
    api.user("root", ["admin"])
    # An operator: an officer would wait for a second admin (tests/api/test_users.py).
    base = {"username": "bob", "full_name": "Bob B", "staff_number": "77", "unit": "Unit A", "roles": ["operator"]}
    with api.client("root") as c:
        r = c.post("/api/v1/users", json={**base, "password": "short"})
        assert (r.status_code, r.json()["error"]["code"]) == (422, "password_weak")
        r = c.post("/api/v1/users", json={**base, "roles": ["superuser"], "password": PASSWORD})
        assert (r.status_code, r.json()["error"]["code"]) == (422, "role_invalid")
        r = c.post("/api/v1/users", json={**base, "password": PASSWORD})
        assert r.status_code == 201
        r = c.post("/api/v1/users", json={**base, "password": PASSWORD})
        assert (r.status_code, r.json()["error"]["code"]) == (409, "user_exists")


def test_oversized_bodies_are_refused_before_reading(api) -> None:
    with api.client() as c:
        r = c.post("/api/v1/auth/login", content=b"x" * (api.rt.settings.api_max_body_bytes + 1))
        assert (r.status_code, r.json()["error"]["code"]) == (413, "body_too_large")


def test_oversized_streamed_bodies_are_refused_too(api) -> None:
    """Chunked, with no Content-Length: the limit is still 413, and a small chunked body still gets through."""

    def body(n: int):
        yield from (b"x" * 1024 for _ in range(n))

    with api.client() as c:
        r = c.post("/api/v1/auth/login", content=body(100), headers={"content-type": "application/json"})
        assert (r.status_code, r.json()["error"]["code"]) == (413, "body_too_large")
        small = iter([b'{"username": "nobody", "password": "wrong password"}'])
        r = c.post("/api/v1/auth/login", content=small, headers={"content-type": "application/json"})
        assert (r.status_code, r.json()["error"]["code"]) == (401, "login_failed")
