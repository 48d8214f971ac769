"""Users and roles that one admin cannot stack around a rule (api.users): separation of duties, two-admin changes,
the last admin, re-enabling without reviving tokens, and the command line held to the same rules."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select, text, update

from api import audit, users
from api.people import principal_for
from nvr.clock import iso
from nvr.errors import NvrError
from nvr.models import AuditEvent, Token, User, UserChange
from tests.api.conftest import DAY_US, PASSWORD
from tests.support.api_server import make_user

NEW_PASSWORD = "a different long password"


def _nvr(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nvr", *args], env=env, input=stdin, capture_output=True, text=True, timeout=120
    )


def _body(username: str, roles: list[str], **over: object) -> dict[str, object]:
    body: dict[str, object] = {
        "username": username,
        "full_name": username.title(),
        "staff_number": f"N-{username}",
        "unit": "Unit A",
        "roles": roles,
        "password": PASSWORD,
    }
    body.update(over)
    return body


def _login(api, username: str, password: str = PASSWORD):
    with api.client() as c:
        return c.post("/api/v1/auth/login", json={"username": username, "password": password})


def _events(api, action: str, outcome: str = "ok") -> list[AuditEvent]:
    """The events of one action (by default the ones that did something, not the refusals)."""
    with api.rt.db.session() as s:
        q = select(AuditEvent).where(AuditEvent.action == action, AuditEvent.outcome == outcome)
        return list(s.scalars(q.order_by(AuditEvent.seq)))


@pytest.fixture
def admins(api):
    """Two admins (root, root2) and an operator, alice."""
    api.user("root", ["admin"])
    api.user("root2", ["admin"])
    api.user("alice", ["operator"])
    return api


# --- an admin creating approvers to release someone else's hold -----------------------------------------------
def test_approver_accounts_an_admin_makes_stay_pending_until_a_second_admin_confirms(admins) -> None:
    """The issue's attack: root made two approver accounts and used them to request and confirm the release of
    someone else's evidence hold. Now the accounts do not exist until another admin confirms each."""
    api = admins
    api.camera("cam-a", segments=2)
    api.user("appr", ["approver"])
    with api.client("appr") as c:
        hold = c.post(
            "/api/v1/holds",
            json={
                "case_ref": "CASE-7",
                "title": "Gate",
                "reason": "incident 7",
                "cameras": ["cam-a"],
                "start": iso(api.clock.now_us() - 2 * DAY_US),
            },
        )
        assert hold.status_code == 201, hold.text
    changes = []
    with api.client("root") as c:
        for name in ("sock1", "sock2"):
            r = c.post("/api/v1/users", json=_body(name, ["approver"]))
            assert r.status_code == 202, r.text
            ch = r.json()
            assert (ch["kind"], ch["state"], ch["user_id"], ch["roles"]) == ("create", "pending", None, ["approver"])
            assert ch["requested_by"] == api.ids["root"] and "password" not in str(ch).lower()
            changes.append(ch["id"])
        # Neither account exists: no login, no listing, and root cannot confirm its own requests.
        assert {u["username"] for u in c.get("/api/v1/users").json()["users"]} == {"root", "root2", "alice", "appr"}
        for cid in changes:
            r = c.post(f"/api/v1/user-changes/{cid}/confirm")
            assert (r.status_code, r.json()["error"]["code"]) == (403, "user_change_same_admin")
    for name in ("sock1", "sock2"):
        assert (_login(api, name).status_code, _login(api, name).json()["error"]["code"]) == (401, "login_failed")
    with api.rt.db.session() as s:
        stored = s.scalar(select(UserChange.payload).where(UserChange.id == changes[0]))
    assert PASSWORD not in stored and "$argon2id$" in stored  # only the hash is kept
    # The hold stays where it was: nobody could act on it.
    with api.client("appr") as c:
        held = c.get(f"/api/v1/holds/{hold.json()['id']}").json()
        assert held["protecting"] and held["release_requested_by_id"] is None
    # A second admin agrees: now sock1 exists (and sock2 is rejected), both steps audited.
    with api.client("root2") as c:
        ok = c.post(f"/api/v1/user-changes/{changes[0]}/confirm")
        assert ok.status_code == 200, ok.text
        assert ok.json()["state"] == "confirmed" and ok.json()["user"]["roles"] == ["approver"]
        no = c.post(f"/api/v1/user-changes/{changes[1]}/reject", json={"reason": "nobody asked for this"})
        assert no.status_code == 200 and no.json()["state"] == "rejected"
    assert _login(api, "sock1").status_code == 201
    assert _login(api, "sock2").status_code == 401
    assert [e.reason for e in _events(api, "user.change.request")] == [
        "create username=sock1 roles=approver",
        "create username=sock2 roles=approver",
    ]
    (confirm,) = _events(api, "user.change.confirm")
    assert confirm.actor_id == api.ids["root2"] and confirm.object_id == f"user_change:{changes[0]}"
    (made,) = [e for e in _events(api, "user.create") if e.object_id == f"user:{ok.json()['user_id']}"]
    assert made.actor_id == api.ids["root2"] and f"requested by Root ({'root'})" in (made.reason or "")
    assert [e.actor_id for e in _events(api, "user.change.reject")] == [api.ids["root2"]]


def test_an_admin_cannot_give_itself_or_anyone_a_role_beside_admin(admins) -> None:
    api = admins
    me = api.ids["root"]
    with api.client("root") as c:
        for roles in (["admin", "approver"], ["admin", "officer"], ["admin", "auditor"]):
            r = c.patch(f"/api/v1/users/{me}", json={"roles": roles})
            assert (r.status_code, r.json()["error"]["code"]) == (422, "role_conflict"), roles
            r = c.patch(f"/api/v1/users/{api.ids['root2']}", json={"roles": roles})
            assert (r.status_code, r.json()["error"]["code"]) == (422, "role_conflict"), roles
            r = c.post("/api/v1/users", json=_body("combo", roles))
            assert (r.status_code, r.json()["error"]["code"]) == (422, "role_conflict"), roles
        assert c.get("/api/v1/me").json()["roles"] == ["admin"]
        grant = {
            "user_id": api.ids["alice"], "cameras": ["cam-x"], "actions": ["playback"], "window": {"last_days": 1},
            "valid_until": "2099-01-01T00:00:00Z", "purpose": "p", "case_ref": "c",
        }  # fmt: skip
        assert c.post("/api/v1/grants", json=grant).json()["error"]["code"] == "role_forbidden"
        # Stepping down to approver: admin goes at once, approver waits for the other admin.
        r = c.patch(f"/api/v1/users/{me}", json={"roles": ["approver"]})
        assert r.status_code == 202 and r.json()["user"]["roles"] == [] and r.json()["roles"] == ["approver"]
        assert c.get("/api/v1/users").json()["error"]["code"] == "role_forbidden"
    with api.client("root2") as c:
        assert c.post(f"/api/v1/user-changes/{r.json()['id']}/confirm").status_code == 200
    with api.client("root") as c:
        assert c.get("/api/v1/me").json()["roles"] == ["approver"]
    with api.rt.db.session() as s:
        assert s.scalar(select(User.roles).where(User.id == me)) == "approver"


def test_removing_roles_is_at_once_adding_a_confirmed_role_waits(admins) -> None:
    api = admins
    uid = api.user("olga", ["officer", "viewer"])
    with api.client("root") as c:
        r = c.patch(f"/api/v1/users/{uid}", json={"roles": ["officer"]})
        assert r.status_code == 200 and r.json()["roles"] == ["officer"]  # viewer removed at once
        r = c.patch(f"/api/v1/users/{uid}", json={"roles": ["operator", "auditor"]})
        assert r.status_code == 202, r.text
        assert r.json()["kind"] == "roles" and r.json()["roles"] == ["auditor"]
        assert r.json()["user"]["roles"] == ["operator"]  # officer gone, operator added, auditor waits
        again = c.patch(f"/api/v1/users/{uid}", json={"roles": ["operator", "auditor"]})
        assert (again.status_code, again.json()["error"]["code"]) == (409, "user_change_pending")
        both = c.patch(f"/api/v1/users/{api.ids['alice']}", json={"roles": ["officer"], "password": NEW_PASSWORD})
        assert (both.status_code, both.json()["error"]["code"]) == (422, "user_change_one_at_a_time")
    with api.client("olga") as c:
        assert c.get("/api/v1/me").json()["roles"] == ["operator"]
    with api.client("root2") as c:
        done = c.post(f"/api/v1/user-changes/{r.json()['id']}/confirm")
        assert done.status_code == 200 and done.json()["user"]["roles"] == ["operator", "auditor"]
    reasons = [e.reason for e in _events(api, "user.roles")]
    assert reasons[0] == "roles=officer; removed viewer"
    assert reasons[1] == "roles=operator; removed officer; added operator"
    assert reasons[2].startswith("roles=operator,auditor; confirmed change")


def test_who_may_decide_a_change(admins) -> None:
    """Never the requester, never the user it is about; the requester may cancel; changes lapse after a week."""
    api = admins
    api.user("root3", ["admin"])
    with api.client("root") as c:
        reset = c.patch(f"/api/v1/users/{api.ids['root2']}", json={"password": NEW_PASSWORD})
        assert reset.status_code == 202 and reset.json()["kind"] == "password"
        made = c.post("/api/v1/users", json=_body("carl", ["officer"])).json()
        stale = c.post("/api/v1/users", json=_body("dora", ["auditor"])).json()
        assert c.post("/api/v1/users", json=_body("carl", ["officer"])).json()["error"]["code"] == "user_change_pending"
    with api.client("root2") as c:  # the subject of the reset
        r = c.post(f"/api/v1/user-changes/{reset.json()['id']}/confirm")
        assert (r.status_code, r.json()["error"]["code"]) == (403, "user_change_self")
        r = c.post(f"/api/v1/user-changes/{made['id']}/cancel")
        assert (r.status_code, r.json()["error"]["code"]) == (403, "user_change_not_requester")
    with api.client("alice") as c:  # not an admin at all
        assert c.post(f"/api/v1/user-changes/{made['id']}/confirm").json()["error"]["code"] == "role_forbidden"
    with api.client("root") as c:
        assert c.post(f"/api/v1/user-changes/{made['id']}/cancel").json()["state"] == "cancelled"
        r = c.post(f"/api/v1/user-changes/{made['id']}/confirm")
        assert r.json()["error"]["code"] == "user_change_same_admin"
    with api.client("root3") as c:
        r = c.post(f"/api/v1/user-changes/{made['id']}/confirm")
        assert (r.status_code, r.json()["error"]["code"]) == (409, "user_change_state_invalid")
        assert c.post(f"/api/v1/user-changes/{reset.json()['id']}/confirm").status_code == 200
        listed = c.get("/api/v1/user-changes", params={"state": "pending"}).json()["changes"]
        assert [ch["id"] for ch in listed] == [stale["id"]]
        api.clock.advance(8 * DAY_US / 1e6)
        r = c.post(f"/api/v1/user-changes/{stale['id']}/confirm")
        assert (r.status_code, r.json()["error"]["code"]) == (409, "user_change_expired")
        assert [ch["id"] for ch in c.get("/api/v1/user-changes", params={"state": "expired"}).json()["changes"]] == [
            stale["id"]
        ]
        assert c.get("/api/v1/user-changes", params={"state": "nope"}).json()["error"]["code"] == (
            "user_change_state_invalid"
        )
    # The reset took effect: root2's old session ended, the new password works.
    with api.client("root2") as c:
        assert c.get("/api/v1/me").json()["error"]["code"] == "token_revoked"
    api.clock.advance(1)
    assert _login(api, "root2", NEW_PASSWORD).status_code == 201


# --- re-enabling ------------------------------------------------------------------------------------------------
def test_reenabling_revives_no_old_session_or_personal_token(admins) -> None:
    api = admins
    uid = api.ids["alice"]
    with api.client("alice") as c:
        personal = c.post("/api/v1/tokens", json={"name": "script", "expires_in_days": 30}).json()["token"]
    old = {"session": api.tokens["alice"], "personal": personal}
    with api.client("root") as c:
        r = c.post(f"/api/v1/users/{uid}/disable", json={"reason": "left the unit"})
        assert r.status_code == 200 and r.json()["state"] == "disabled"
        asked = c.post(f"/api/v1/users/{uid}/enable")
        assert asked.status_code == 202 and asked.json()["kind"] == "enable"
        assert c.get(f"/api/v1/users/{uid}").json()["state"] == "disabled"  # not before a second admin
    api.clock.advance(1)
    with api.client("root2") as c:
        assert c.post(f"/api/v1/user-changes/{asked.json()['id']}/confirm").json()["user"]["state"] == "active"
    api.clock.advance(1)
    with api.client() as c:
        for kind, secret in old.items():
            r = c.get("/api/v1/me", headers={"Authorization": f"Bearer {secret}"})
            assert (r.status_code, r.json()["error"]["code"]) == (401, "token_revoked"), kind
    fresh = _login(api, "alice")
    assert fresh.status_code == 201
    with api.client() as c:
        assert c.get("/api/v1/me", headers={"Authorization": f"Bearer {fresh.json()['token']}"}).status_code == 200


def test_a_state_column_edited_back_by_hand_revives_no_token(admins) -> None:
    api = admins
    uid = api.ids["alice"]
    with api.client("root") as c:
        assert c.patch(f"/api/v1/users/{uid}", json={"state": "disabled"}).status_code == 200
    with api.rt.db.session() as s:  # someone with database access undoes the disabling and the revocation
        s.execute(update(User).where(User.id == uid).values(state="active"))
        s.execute(update(Token).where(Token.user_id == uid).values(revoked_us=None))
    with api.client("alice") as c:
        r = c.get("/api/v1/me")
        assert (r.status_code, r.json()["error"]["code"]) == (401, "token_revoked")
    with api.rt.db.session() as s:  # a playback ticket names its session token: the same check refuses it
        t = s.scalar(select(Token).where(Token.user_id == uid))
        with pytest.raises(NvrError) as e:
            principal_for(s, t, api.clock.now_us())
    assert e.value.code == "token_revoked"


def test_a_hand_edited_role_conflict_is_refused_at_authentication(admins) -> None:
    api = admins
    with api.rt.db.session() as s:
        s.execute(update(User).where(User.id == api.ids["root"]).values(roles="admin,approver"))
    with api.client("root") as c:
        r = c.get("/api/v1/me")
        assert (r.status_code, r.json()["error"]["code"]) == (403, "role_conflict")
        assert c.get("/api/v1/users").status_code == 403
    denied = _events(api, "auth.me", "denied")
    assert [e.reason for e in denied] == ["role_conflict"]
    assert denied[0].actor_id == api.ids["root"], "the refusal names the user whose row was edited"
    assert len(_events(api, "user.list", "denied")) == 1, "one event each, never folded into the anonymous tally"


# --- the last admin ---------------------------------------------------------------------------------------------
def test_the_last_admin_cannot_be_disabled_or_demoted_through_the_api(api) -> None:
    uid = api.user("root", ["admin"])
    with api.client("root") as c:
        for call in (
            lambda: c.post(f"/api/v1/users/{uid}/disable"),
            lambda: c.patch(f"/api/v1/users/{uid}", json={"state": "disabled"}),
            lambda: c.patch(f"/api/v1/users/{uid}", json={"roles": ["operator"]}),
        ):
            r = call()
            assert (r.status_code, r.json()["error"]["code"]) == (409, "last_admin")
        assert c.get("/api/v1/me").json()["roles"] == ["admin"]


def test_nvr_user_disable_of_the_last_admin_is_refused(api, nvr_env) -> None:
    """The rule lived only in the API route: the CLI disabled the last admin."""
    api.user("root", ["admin"])
    r = _nvr(nvr_env, "user", "disable", "root")
    assert r.returncode == 1 and "last_admin" in r.stderr, (r.returncode, r.stderr)
    with api.client("root") as c:
        assert c.get("/api/v1/me").status_code == 200
    r = _nvr(nvr_env, "user", "roles", "root", "--role", "viewer")
    assert r.returncode == 1 and "last_admin" in r.stderr
    api.user("root2", ["admin"])
    r = _nvr(nvr_env, "user", "disable", "root", "--reason", "on leave")
    assert r.returncode == 0, r.stderr
    with api.client("root") as c:
        assert c.get("/api/v1/me").json()["error"]["code"] == "user_disabled"
    (ev,) = _events(api, "user.disable")
    assert ev.actor_name.startswith("cli:") and ev.reason == "disabled: on leave"


def test_admins_disabling_each_other_at_once_always_leave_one(api) -> None:
    """24 parallel disables among three admins: the last-admin check holds under the race (row locks on
    PostgreSQL, the write lock on SQLite)."""
    names = ["a1", "a2", "a3"]
    for n in names:
        api.user(n, ["admin"])
    pairs = [(who, target) for who in names for target in names if who != target] * 4

    def disable(pair: tuple[str, str]) -> int:
        who, target = pair
        with api.client(who) as c:
            return c.post(f"/api/v1/users/{api.ids[target]}/disable").status_code

    with ThreadPoolExecutor(max_workers=24) as pool:
        codes = list(pool.map(disable, pairs))
    assert set(codes) <= {200, 401, 409}, codes
    with api.rt.db.session() as s:
        active = list(s.scalars(select(User.username).where(User.state == "active")))
    assert len(active) == 1 and codes.count(200) == 2, (active, codes)


# --- two-person confirmations racing -------------------------------------------------------------------------------
def test_parallel_confirmations_exactly_one_succeeds(admins) -> None:
    api = admins
    api.user("root3", ["admin"])
    with api.client("root") as c:
        cid = c.post("/api/v1/users", json=_body("newappr", ["approver"])).json()["id"]

    def confirm(i: int) -> int:
        with api.client("root2" if i % 2 else "root3") as c:
            return c.post(f"/api/v1/user-changes/{cid}/confirm").status_code

    with ThreadPoolExecutor(max_workers=24) as pool:
        codes = list(pool.map(confirm, range(24)))
    assert codes.count(200) == 1 and codes.count(409) == 23, codes
    with api.rt.db.session() as s:
        assert s.scalar(text("SELECT count(*) FROM users WHERE username = 'newappr'")) == 1
    assert len(_events(api, "user.change.confirm")) == 1
    assert len(_events(api, "user.create")) == 1


# --- the command line -----------------------------------------------------------------------------------------------
def test_the_cli_files_changes_but_never_confirms_them(api, nvr_env) -> None:
    api.user("root", ["admin"])
    r = _nvr(
        nvr_env,
        "user", "create", "--username", "pat", "--name", "Pat P", "--staff-number", "P-1", "--unit", "Unit A",
        "--role", "approver", "--password-stdin",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "needs a second admin's confirmation" in r.stdout and r.stdout.startswith("change ")
    cid = int(r.stdout.split()[1])
    assert _login(api, "pat").status_code == 401
    # No command confirms, and the service refuses the command line's actor.
    assert _nvr(nvr_env, "user", "changes", "--confirm", str(cid)).returncode == 2
    from nvr.cli.common import cli_actor

    with api.rt.db.session() as s:
        for decide in (users.confirm_change, users.reject_change):
            with pytest.raises(NvrError) as e:
                decide(s, cli_actor(), audit.CLI, api.clock.now_us(), cid)
            assert e.value.code == "user_change_cli"
    listed = _nvr(nvr_env, "user", "changes", "--state", "pending")
    assert listed.returncode == 0 and f"{cid:>4} pending" in listed.stdout
    # An admin on the API is a second person to whoever used the shell.
    with api.client("root") as c:
        ok = c.post(f"/api/v1/user-changes/{cid}/confirm")
        assert ok.status_code == 200 and ok.json()["requested_by"] is None
        assert ok.json()["requested_by_name"].startswith("cli:")
    assert _login(api, "pat").status_code == 201
    # The command line withdraws what it filed, and only that.
    uid = api.user("vic", ["viewer"])
    with api.client("root") as c:
        assert c.post(f"/api/v1/users/{uid}/disable").status_code == 200
        api_filed = c.post(f"/api/v1/users/{uid}/enable").json()["id"]
    r = _nvr(nvr_env, "user", "changes", "--cancel", str(api_filed))
    assert r.returncode == 1 and "user_change_not_requester" in r.stderr
    r = _nvr(nvr_env, "user", "roles", "vic", "--role", "officer", "--json")
    assert r.returncode == 0 and '"pending": true' in r.stdout
    with api.rt.db.session() as s:
        cli_filed = s.scalar(select(UserChange.id).where(UserChange.kind == "roles"))
    r = _nvr(nvr_env, "user", "changes", "--cancel", str(cli_filed))
    assert r.returncode == 0 and "cancelled" in r.stdout, r.stderr


def test_bootstrap_and_break_glass_only_when_no_admin_could_confirm(api, nvr_env) -> None:
    def create(name: str, role: str) -> subprocess.CompletedProcess[str]:
        return _nvr(
            nvr_env,
            "user", "create", "--username", name, "--name", name.title(), "--staff-number", f"B-{name}",
            "--unit", "HQ", "--role", role, "--password-stdin",
            stdin=PASSWORD + "\n",
        )  # fmt: skip

    first = create("chief", "admin")
    assert first.returncode == 0 and "created user chief" in first.stdout, first.stderr
    second = create("deputy", "admin")
    assert second.returncode == 0 and "needs a second admin's confirmation" in second.stdout
    (made,) = _events(api, "user.create")
    assert made.actor_name.startswith("cli:") and made.reason == "roles=admin; bootstrap: no active admin"
    # The only admin forgot the password: the command line resets it at once (nobody could confirm).
    r = _nvr(nvr_env, "user", "password", "chief", "--password-stdin", stdin=NEW_PASSWORD + "\n")
    assert r.returncode == 0 and "break-glass" in r.stdout, r.stderr
    api.clock.advance(300)  # the command line ran on the real clock, ahead of the server's fake one
    assert _login(api, "chief", NEW_PASSWORD).status_code == 201
    # With nobody active at all (a row edited by hand), the command line re-enables an admin at once.
    with api.rt.db.session() as s:
        s.execute(update(User).where(User.username == "chief").values(state="disabled"))
    r = _nvr(nvr_env, "user", "enable", "chief")
    assert r.returncode == 0 and "break-glass" in r.stdout, r.stderr
    assert [e.reason for e in _events(api, "user.enable")] == ["enabled; bootstrap: no active admin"]
    api.clock.advance(300)
    # Once there is an admin, enabling someone else is a change again.
    uid = api.user("olga", ["operator"])
    with api.client() as c:
        c.headers["Authorization"] = "Bearer " + _login(api, "chief", NEW_PASSWORD).json()["token"]
        assert c.post(f"/api/v1/users/{uid}/disable").status_code == 200
    r = _nvr(nvr_env, "user", "enable", "olga")
    assert r.returncode == 0 and "needs a second admin's confirmation" in r.stdout
    r = _nvr(nvr_env, "user", "password", "olga", "--password-stdin", stdin=NEW_PASSWORD + "\n")
    assert r.returncode == 0 and "needs a second admin's confirmation" in r.stdout


# --- identity-provider accounts ----------------------------------------------------------------------------------
def test_identity_provider_accounts_have_no_local_password(admins) -> None:
    api = admins
    api.ids["ida"], api.tokens["ida"] = make_user(api.rt, api.clock, "ida", ["officer"], auth_source="oidc")
    for pw in (PASSWORD, "", "x" * 20):
        r = _login(api, "ida", pw or "-")
        assert (r.status_code, r.json()["error"]["code"]) == (401, "login_failed")
    # Its own password change (POST /me/password's service; over HTTP the account is checked with the provider
    # first, api.oidc) and an admin's reset are refused alike.
    with api.rt.db.session() as s:
        t = s.scalar(select(Token).where(Token.user_id == api.ids["ida"]))
        me = principal_for(s, t, api.clock.now_us())
        with pytest.raises(NvrError) as e:
            users.change_own_password(s, me, audit.CLI, api.clock.now_us(), "-", NEW_PASSWORD)
        assert e.value.code == "password_not_local"
    with api.client("root") as c:
        assert c.get(f"/api/v1/users/{api.ids['ida']}").json()["auth_source"] == "oidc"
        r = c.patch(f"/api/v1/users/{api.ids['ida']}", json={"password": NEW_PASSWORD})
        assert (r.status_code, r.json()["error"]["code"]) == (409, "password_not_local")
    # Roles from the provider take effect without a second admin, but separation of duties still holds.
    provider = audit.Actor(None, "identity provider", None, None)
    with api.rt.db.session() as s:
        u = s.get(User, api.ids["ida"])
        assert users.apply_provider_roles(s, u, ["officer", "approver"], api.clock.now_us(), provider, audit.INTERNAL)
        assert not users.apply_provider_roles(
            s, u, ["approver", "officer"], api.clock.now_us(), provider, audit.INTERNAL
        )
        with pytest.raises(NvrError) as e:
            users.apply_provider_roles(s, u, ["admin", "auditor"], api.clock.now_us(), provider, audit.INTERNAL)
        assert e.value.code == "role_conflict"
    with api.client("root") as c:
        assert c.get(f"/api/v1/users/{api.ids['ida']}").json()["roles"] == ["approver", "officer"]
    (ev,) = _events(api, "user.roles")
    assert ev.reason == "roles=approver,officer; from the identity provider"


def test_the_openapi_document_has_response_schemas_for_people(api) -> None:
    with api.client() as c:
        doc = c.get("/api/v1/openapi.json").json()
    paths = doc["paths"]

    def schema(path: str, method: str, status: str) -> str:
        return paths[path][method]["responses"][status]["content"]["application/json"]["schema"]["$ref"]

    assert schema("/api/v1/users", "post", "201").endswith("/UserOut")
    assert schema("/api/v1/users", "post", "202").endswith("/UserChangeOut")
    assert schema("/api/v1/users/{user_id}", "patch", "202").endswith("/UserChangeOut")
    assert schema("/api/v1/users", "get", "200").endswith("/UserList")
    assert schema("/api/v1/me", "get", "200").endswith("/MeOut")
    assert schema("/api/v1/tokens", "post", "201").endswith("/TokenCreated")
    assert schema("/api/v1/user-changes", "get", "200").endswith("/UserChangeList")
    assert schema("/api/v1/user-changes/{change_id}/confirm", "post", "200").endswith("/UserChangeOut")
    assert schema("/api/v1/users/{user_id}/enable", "post", "202").endswith("/UserChangeOut")
