"""Login throttling (api.throttle): per account and per client address, counted before the password is checked so
parallel attempts cannot slip past the limit, audited, and unlocked by an admin through the API or the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from nvr.clock import FakeClock
from nvr.models import AuditEvent, DenialTally, LoginThrottle
from nvr.runtime import Runtime
from tests.api.conftest import PASSWORD, Api
from tests.support.api_server import running_api

LOGIN = "/api/v1/auth/login"
WRONG = "wrong password, surely"
ADDR = "addr:127.0.0.1"


@pytest.fixture
def strict_api(settings_factory, tmp_path: Path) -> Iterator[Api]:
    """The API with a small address limit: each refused password check costs a second of argon2 on a small
    machine, and the address limit's parallel test should not need twenty of them."""
    clock = FakeClock(start_us=time.time_ns() // 1000)
    rt = Runtime.open(settings_factory(login_addr_max_failures=6), clock=clock)
    rt.init_default_volume()
    with running_api(rt, clock) as url:
        yield Api(rt, clock, url, tmp_path)
    rt.db.dispose()


def _slow_client(api) -> httpx.Client:
    """For requests that queue behind many argon2 checks at once."""
    return httpx.Client(base_url=api.url, timeout=300)


def _login(c: httpx.Client, username: str, password: str) -> tuple[int, str | None, httpx.Response]:
    r = c.post(LOGIN, json={"username": username, "password": password})
    return r.status_code, (r.json().get("error") or {}).get("code"), r


def _counts(api) -> dict[str, tuple[int, int | None]]:
    with api.rt.db.session() as s:
        return {r.key: (r.failures, r.locked_until_us) for r in s.scalars(select(LoginThrottle))}


def _events(api, *actions: str) -> list[AuditEvent]:
    with api.rt.db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action.in_(actions)).order_by(AuditEvent.seq)))


def _nvr(env, *args):
    return subprocess.run([sys.executable, "-m", "nvr", *args], env=env, capture_output=True, text=True, timeout=120)


def _align_to_bucket(api) -> None:
    """Move the clock to the start of a denial bucket, so the refusals of one test share it."""
    length = api.rt.settings.denial_bucket_seconds * 1_000_000
    api.clock.advance((length - api.clock.now_us() % length) / 1e6)


def test_an_account_is_locked_after_the_limit_and_then_even_the_right_password_waits(api) -> None:
    _align_to_bucket(api)
    api.user("alice", ["operator"])
    limit = api.rt.settings.login_max_failures
    lock_s = int(api.rt.settings.login_lock_seconds)
    with api.client() as c:
        assert [_login(c, "alice", WRONG)[:2] for _ in range(limit)] == [(401, "login_failed")] * limit
        status, code, r = _login(c, "alice", PASSWORD)
        assert (status, code) == (429, "login_locked")
        assert r.headers["retry-after"] == str(lock_s)
        # The lock is checked before the password: nothing about the password leaks while it holds.
        assert _login(c, "alice", WRONG)[:2] == (429, "login_locked")
        assert _counts(api)["user:alice"][0] == limit
        api.clock.advance(lock_s - 1)
        assert _login(c, "alice", PASSWORD)[:2] == (429, "login_locked")
        api.clock.advance(1)
        assert _login(c, "alice", PASSWORD)[0] == 201
    counts = _counts(api)
    assert "user:alice" not in counts  # a success resets the account
    assert counts[ADDR] == (limit, None)  # the address keeps its failures (the success gave its own claim back)
    denied = [(e.reason, e.object_id) for e in _events(api, "auth.login") if e.outcome == "denied"]
    assert denied == [("login_failed", "username:alice")] * limit + [("login_locked", "username:alice")]
    (lock,) = _events(api, "auth.login.lock")
    assert (lock.object_id, lock.outcome, lock.actor_name, lock.client_addr) == (
        "user:alice",
        "ok",
        "system",
        "127.0.0.1",
    )
    assert lock.reason.startswith(f"{limit} failed logins (limit {limit}): locked for {lock_s} s, until ")
    # The second refusal of the locked account was counted with the other anonymous refusals, not written alone.
    with api.rt.db.session() as s:
        tally = s.scalars(select(DenialTally).where(DenialTally.code == "login_locked")).one()
    assert tally.count == 3


def test_each_further_failure_doubles_the_lock_up_to_the_maximum_for_names_that_do_not_exist_too(api) -> None:
    st = api.rt.settings
    limit, lock_s, max_s = st.login_max_failures, int(st.login_lock_seconds), int(st.login_lock_max_seconds)
    seen = []
    with api.client() as c:
        for _ in range(limit):
            assert _login(c, "mallory", WRONG)[:2] == (401, "login_failed")
        for n in range(limit, limit + 9):
            status, code, r = _login(c, "mallory", WRONG)
            assert (status, code) == (429, "login_locked")
            seen.append(int(r.headers["retry-after"]))
            api.clock.advance(seen[-1])
            assert _login(c, "mallory", WRONG)[:2] == (401, "login_failed")  # the lock is over: one more try
    expected = [min(lock_s * 2**k, max_s) for k in range(9)]
    assert seen == expected and expected[-1] == max_s and expected[-2] == max_s
    locks = _events(api, "auth.login.lock")
    assert [e.object_id for e in locks] == ["user:mallory"] * 10
    assert [int(e.reason.split("locked for ")[1].split(" s")[0]) for e in locks] == [*expected, max_s]


def test_existing_and_unknown_names_are_answered_alike(api) -> None:
    api.user("alice", ["operator"])
    limit = api.rt.settings.login_max_failures
    answers = {}
    with api.client() as c:
        for name in ("alice", "nobody-here"):
            seq = [_login(c, name, WRONG) for _ in range(limit + 1)]
            answers[name] = [
                (s, code, r.headers.get("retry-after"), r.json()["error"]["message"]) for s, code, r in seq
            ]
    assert answers["alice"] == answers["nobody-here"]
    assert answers["alice"][-1][:2] == (429, "login_locked")


def test_an_address_is_locked_after_its_limit_across_accounts_and_an_admin_unlocks_it(strict_api) -> None:
    api = strict_api
    api.user("root", ["admin"])
    api.user("alice", ["operator"])
    limit = api.rt.settings.login_addr_max_failures
    with api.client() as c:
        assert [_login(c, f"guess{i}", WRONG)[:2] for i in range(limit)] == [(401, "login_failed")] * limit
        status, code, r = _login(c, "alice", PASSWORD)
        assert (status, code) == (429, "login_locked") and int(r.headers["retry-after"]) > 0
    counts = _counts(api)
    assert counts[ADDR][0] == limit and "user:alice" not in counts  # the refused attempt counted nowhere
    assert all(counts[f"user:guess{i}"][0] == 1 for i in range(limit))
    (lock,) = _events(api, "auth.login.lock")
    assert lock.object_id == ADDR and lock.reason.startswith(f"{limit} failed logins (limit {limit})")
    with api.client("root") as admin:
        listed = admin.get("/api/v1/auth/login-locks").json()["locks"]
        assert [(v["key"], v["kind"], v["name"], v["failures"], v["locked"]) for v in listed] == [
            (ADDR, "address", "127.0.0.1", limit, True)
        ]
        everything = admin.get("/api/v1/auth/login-locks", params={"all": "true"}).json()["locks"]
        assert len(everything) == limit + 1 and everything[0]["key"] == ADDR
        r = admin.post("/api/v1/auth/login-locks/unlock", json={"key": ADDR})
        assert r.status_code == 200, r.text
        assert (r.json()["failures"], r.json()["locked"]) == (limit, True)
        again = admin.post("/api/v1/auth/login-locks/unlock", json={"key": ADDR})
        assert (again.status_code, again.json()["error"]["code"]) == (404, "lock_not_found")
        bad = admin.post("/api/v1/auth/login-locks/unlock", json={"key": "chief"})
        assert (bad.status_code, bad.json()["error"]["code"]) == (422, "lock_key_invalid")
    with api.client() as c:
        assert _login(c, "alice", PASSWORD)[0] == 201
    (unlock,) = [e for e in _events(api, "auth.login.unlock") if e.outcome == "ok"]
    assert (unlock.actor_id, unlock.object_id) == (api.ids["root"], ADDR)
    assert unlock.reason.startswith(f"cleared {limit} failed logins; locked until ")


def test_parallel_wrong_passwords_get_exactly_the_limit_of_password_checks(api) -> None:
    """25 attempts at once on one account: exactly login_max_failures are checked (401), the rest are refused by
    the lock (429); the counter says exactly that, and the lock holds for the right password afterwards."""
    api.user("alice", ["operator"])
    limit = api.rt.settings.login_max_failures
    n = 25
    barrier = threading.Barrier(n)

    def attempt(_: int) -> tuple[int, str | None]:
        with _slow_client(api) as c:
            barrier.wait()
            return _login(c, "alice", WRONG)[:2]

    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(attempt, range(n)))
    assert sorted(answers) == sorted([(401, "login_failed")] * limit + [(429, "login_locked")] * (n - limit))
    counts = _counts(api)
    assert counts["user:alice"][0] == limit and counts[ADDR] == (limit, None)
    assert len(_events(api, "auth.login.lock")) == 1
    assert len([e for e in _events(api, "auth.login") if e.reason == "login_failed"]) == limit
    with api.client() as c:
        assert _login(c, "alice", PASSWORD)[:2] == (429, "login_locked")


def test_parallel_guesses_at_many_names_get_exactly_the_address_limit(strict_api) -> None:
    """One guess, then 25 at once at as many names from one address: exactly the address's remaining allowance
    is checked, the rest refused; each refused attempt counted nowhere."""
    api = strict_api
    limit = api.rt.settings.login_addr_max_failures
    with api.client() as c:
        assert _login(c, "first-guess", WRONG)[:2] == (401, "login_failed")
    n = 25
    barrier = threading.Barrier(n)

    def attempt(i: int) -> tuple[int, str | None]:
        with _slow_client(api) as c:
            barrier.wait()
            return _login(c, f"name{i}", WRONG)[:2]

    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(attempt, range(n)))
    checked = limit - 1
    assert sorted(answers) == sorted([(401, "login_failed")] * checked + [(429, "login_locked")] * (n - checked))
    counts = _counts(api)
    assert counts.pop(ADDR)[0] == limit
    assert sorted(counts.values()) == [(1, None)] * limit
    assert len(_events(api, "auth.login.lock")) == 1


def test_a_success_resets_the_account_counter(api) -> None:
    api.user("alice", ["operator"])
    limit = api.rt.settings.login_max_failures
    with api.client() as c:
        for _ in range(2):
            assert [_login(c, "alice", WRONG)[0] for _ in range(limit - 1)] == [401] * (limit - 1)
            assert _counts(api)["user:alice"] == (limit - 1, None)
            assert _login(c, "alice", PASSWORD)[0] == 201
            assert "user:alice" not in _counts(api)
        assert _counts(api)[ADDR] == (2 * (limit - 1), None)


def test_only_admins_see_and_clear_locks(api) -> None:
    api.user("olga", ["officer"])
    with api.client("olga") as c:
        r = c.get("/api/v1/auth/login-locks")
        assert (r.status_code, r.json()["error"]["code"]) == (403, "role_forbidden")
        r = c.post("/api/v1/auth/login-locks/unlock", json={"key": ADDR})
        assert (r.status_code, r.json()["error"]["code"]) == (403, "role_forbidden")
    with api.client() as c:
        r = c.get("/api/v1/auth/login-locks")
        assert (r.status_code, r.json()["error"]["code"]) == (401, "auth_required")
    (denied,) = [e for e in _events(api, "auth.login.unlock") if e.outcome == "denied"]
    assert (denied.actor_id, denied.reason) == (api.ids["olga"], "role_forbidden")


def test_the_cli_unlocks_through_the_same_service_and_writes_the_same_event(api, nvr_env) -> None:
    """alice is unlocked through the API, bob through ``nvr login-locks``: the two audit events say the same."""
    # The CLI reads the real clock: the API's runs a day ahead of it, so its 30 s locks hold for the CLI too.
    api.clock.advance(86_400)
    api.user("root", ["admin"])
    api.user("alice", ["operator"])
    api.user("bob", ["operator"])
    limit = api.rt.settings.login_max_failures
    with api.client() as c:
        for name in ("alice", "bob"):
            assert [_login(c, name, WRONG)[0] for _ in range(limit)] == [401] * limit
    listed = _nvr(nvr_env, "login-locks", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    keys = [(v["key"], v["locked"]) for v in json.loads(listed.stdout)["locks"]]
    assert ("user:alice", True) in keys and ("user:bob", True) in keys
    with api.client("root") as admin:
        assert admin.post("/api/v1/auth/login-locks/unlock", json={"key": "user:alice"}).status_code == 200
    done = _nvr(nvr_env, "login-locks", "unlock", "user:bob", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["key"] == "user:bob" and json.loads(done.stdout)["locked"] is True
    missing = _nvr(nvr_env, "login-locks", "unlock", "user:bob")
    assert missing.returncode == 2 and "lock_not_found" in missing.stderr
    api_ev, cli_ev = _events(api, "auth.login.unlock")
    assert api_ev.actor_id == api.ids["root"] and cli_ev.actor_name.startswith("cli:")
    assert (api_ev.object_id, cli_ev.object_id) == ("user:alice", "user:bob")
    assert (api_ev.action, api_ev.outcome, api_ev.reason) == (cli_ev.action, cli_ev.outcome, cli_ev.reason)
    with api.client() as c:
        assert _login(c, "alice", PASSWORD)[0] == _login(c, "bob", PASSWORD)[0] == 201


def test_an_identity_provider_account_is_refused_a_local_login_and_that_counts_like_any_failure(api) -> None:
    """Even with the password its row once had, an ``oidc`` account never logs in locally; each such refusal is a
    failure of the account's key, so the throttle holds for these names too."""
    from sqlalchemy import update

    from nvr.models import User

    api.user("ida", ["operator"])
    with api.rt.db.session() as s:
        s.execute(update(User).where(User.username == "ida").values(auth_source="oidc", oidc_subject="sub-ida"))
    limit = api.rt.settings.login_max_failures
    with api.client() as c:
        assert [_login(c, "ida", PASSWORD)[:2] for _ in range(limit)] == [(401, "login_failed")] * limit
        assert _login(c, "ida", PASSWORD)[:2] == (429, "login_locked")
    assert _counts(api)["user:ida"][0] == limit
    assert [e.object_id for e in _events(api, "auth.login.lock")] == ["user:ida"]
