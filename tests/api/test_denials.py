"""Refusals without a valid credential (api.denials): counted in denial_tally, the first of each bucket its own
audit event, the rest summarised in one event once the bucket is over; rate-limited per address; never a count
lost or summarised twice, under concurrent floods, racing summarisers and a shutdown."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from api import audit, denials
from nvr.models import AuditEvent, DenialTally
from tests.api.conftest import PASSWORD
from tests.support.api_server import running_api

CAMERAS = "/api/v1/cameras"
SUMMARY = re.compile(r"(\d+) refusals (\S+) from (\S+) between (\S+) and (\S+) \(bucket of (\d+) s from (\S+);")
US = 1_000_000


def _align_to_bucket(api) -> None:
    """Move the clock to the start of a bucket: the requests of a test then share one."""
    length = api.rt.settings.denial_bucket_seconds * US
    api.clock.advance((length - api.clock.now_us() % length) / 1e6)


def _next_bucket(api) -> None:
    api.clock.advance(api.rt.settings.denial_bucket_seconds)


def _events(db, after_seq: int = 0) -> list[AuditEvent]:
    with db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.seq > after_seq).order_by(AuditEvent.seq)))


def _head(db) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.coalesce(func.max(AuditEvent.seq), 0))))


def _summaries(events: list[AuditEvent]) -> dict[str, int]:
    """code -> count summed over the summary events."""
    out: dict[str, int] = {}
    for e in events:
        if e.action == denials.SUMMARY_ACTION:
            m = SUMMARY.match(e.reason)
            assert m is not None, e.reason
            assert (e.outcome, e.object_id, e.client_addr) == ("denied", f"denials:{m[2]}", m[3])
            out[m[2]] = out.get(m[2], 0) + int(m[1])
    return out


def _housekeeping_pass(api) -> None:
    """Let the API's background loop run one whole round after now."""
    loop = api.app_state().denial_housekeeping
    n = loop.passes
    loop.wake()
    assert loop.wait_passes(n + 2, 30)


def test_a_flood_of_anonymous_and_forged_token_requests_costs_a_few_events(api) -> None:
    """The issue's case: 100 anonymous and 100 forged-token requests added 80 events. Now: the first of each kind
    is its own event, past the address's limit the answer is 429 rate_limited, and after the bucket one summary
    per kind carries the exact count."""
    _align_to_bucket(api)
    limit = api.rt.settings.anonymous_denials_per_minute
    start = _head(api.rt.db)
    answers = []
    with api.client() as c:
        for i in range(100):
            r = c.get(CAMERAS)
            answers.append((r.status_code, r.json()["error"]["code"]))
        for i in range(100):
            r = c.get(CAMERAS, headers={"Authorization": f"Bearer nvrs_forged-{i}"})
            answers.append((r.status_code, r.json()["error"]["code"]))
        assert 1 <= int(r.headers["retry-after"]) <= api.rt.settings.denial_bucket_seconds
        assert "www-authenticate" not in r.headers
    assert answers == [(401, "auth_required")] * limit + [(429, "rate_limited")] * (200 - limit)
    events = _events(api.rt.db, start)
    assert [(e.action, e.outcome, e.reason, e.actor_id) for e in events] == [
        ("camera.list", "denied", "auth_required", None),
        ("camera.list", "denied", "token_invalid; answered 429 rate_limited", None),
    ]
    assert all(e.request_id and e.client_addr == "127.0.0.1" for e in events)
    _next_bucket(api)
    _housekeeping_pass(api)
    events = _events(api.rt.db, start)
    assert len(events) == 4
    assert _summaries(events) == {"auth_required": 100, "token_invalid": 100}
    assert all(f"200 refusals from this address in the bucket, those past {limit}" in e.reason for e in events[2:])
    _housekeeping_pass(api)
    assert len(_events(api.rt.db, start)) == 4  # summarised once


def test_the_next_refusal_after_the_bucket_writes_the_summary(api) -> None:
    _align_to_bucket(api)
    start = _head(api.rt.db)
    with api.client() as c:
        assert {c.get(CAMERAS).status_code for _ in range(7)} == {401}
        _next_bucket(api)
        assert c.get(CAMERAS).status_code == 401  # a new bucket: the limit starts again
    events = _events(api.rt.db, start)
    # Whether the refusal or the background loop wrote it, there is exactly one summary, before the new event.
    assert [e.action for e in events] == ["camera.list", denials.SUMMARY_ACTION, "camera.list"]
    assert _summaries(events) == {"auth_required": 7}
    first, last = SUMMARY.match(events[1].reason).group(4, 5)
    assert first.endswith("Z") and last.endswith("Z") and first <= last


def test_concurrent_floods_lose_no_count(api) -> None:
    """16 clients at once, half without a token, half with forged ones: every refusal is counted, exactly the
    limit are answered 401 (the address's total is one counter), and the summaries carry the exact totals."""
    _align_to_bucket(api)
    limit = api.rt.settings.anonymous_denials_per_minute
    start = _head(api.rt.db)
    per_client, clients = 25, 16
    barrier = threading.Barrier(clients)

    def flood(k: int) -> list[int]:
        headers = {"Authorization": f"Bearer nvrs_forged-{k}"} if k % 2 else {}
        with api.client() as c:
            barrier.wait()
            return [c.get(CAMERAS, headers=headers).status_code for _ in range(per_client)]

    with ThreadPoolExecutor(clients) as pool:
        statuses = [s for batch in pool.map(flood, range(clients)) for s in batch]
    total = per_client * clients
    assert (statuses.count(401), statuses.count(429)) == (limit, total - limit)
    with api.rt.db.session() as s:
        tally = {r.code: r.count for r in s.scalars(select(DenialTally))}
    half = total // 2
    assert tally == {"auth_required": half, "token_invalid": half, denials.TOTAL: total}
    assert len(_events(api.rt.db, start)) == 2
    _next_bucket(api)
    _housekeeping_pass(api)
    assert _summaries(_events(api.rt.db, start)) == {"auth_required": half, "token_invalid": half}


def test_refusals_of_a_real_users_requests_stay_one_event_each_and_are_never_rate_limited(api) -> None:
    _align_to_bucket(api)
    api.user("olga", ["officer"])
    n = api.rt.settings.anonymous_denials_per_minute + 10
    start = _head(api.rt.db)
    with api.client("olga") as c:
        assert {c.get("/api/v1/users").status_code for _ in range(n)} == {403}
    events = [e for e in _events(api.rt.db, start) if e.outcome == "denied"]  # (an abnormal-use alert may follow)
    assert len(events) == n and {(e.actor_id, e.reason) for e in events} == {(api.ids["olga"], "role_forbidden")}
    with api.rt.db.session() as s:
        assert s.scalar(select(func.count()).select_from(DenialTally)) == 0


def test_anonymous_4xx_of_any_kind_is_counted_and_a_locked_login_too(api) -> None:
    _align_to_bucket(api)
    api.user("alice", ["operator"])
    start = _head(api.rt.db)
    with api.client() as c:
        for _ in range(api.rt.settings.login_max_failures):
            assert c.post("/api/v1/auth/login", json={"username": "alice", "password": "wrong!"}).status_code == 401
        for _ in range(20):
            r = c.post("/api/v1/auth/login", json={"username": "alice", "password": PASSWORD})
            assert (r.status_code, r.json()["error"]["code"]) == (429, "login_locked")
            assert c.post("/api/v1/auth/login", json={"user": "alice"}).status_code == 422
    events = [(e.action, e.reason) for e in _events(api.rt.db, start)]
    # Each refused password check is its own event (the throttle bounds how many there can be); the lock's refusals
    # and the malformed bodies are counted.
    # (The attempt that locks writes the lock event before its own refusal.)
    assert events == [("auth.login", "login_failed")] * 4 + [
        ("auth.login.lock", events[4][1]),
        ("auth.login", "login_failed"),
        ("auth.login", "login_locked"),
        ("auth.login", "request_invalid"),
    ]
    _next_bucket(api)
    _housekeeping_pass(api)
    assert _summaries(_events(api.rt.db, start)) == {"login_locked": 20, "request_invalid": 20}


def test_shutdown_summarises_the_running_bucket_and_a_refusal_after_it_is_not_lost(api) -> None:
    """A second API process over the same database stops mid-bucket: it summarises everything counted, the running
    bucket too. Refusals later in that bucket go to its next slot, whose first is again its own event."""
    _align_to_bucket(api)
    start = _head(api.rt.db)
    with running_api(api.rt, api.clock) as other:
        import httpx

        with httpx.Client(base_url=other) as c:
            assert {c.get(CAMERAS).status_code for _ in range(5)} == {401}
    events = _events(api.rt.db, start)
    assert [e.action for e in events] == ["camera.list", denials.SUMMARY_ACTION]
    assert _summaries(events) == {"auth_required": 5}
    with api.client() as c:
        assert {c.get(CAMERAS).status_code for _ in range(3)} == {401}
    events = _events(api.rt.db, start)
    assert [e.action for e in events] == ["camera.list", denials.SUMMARY_ACTION, "camera.list"]
    _next_bucket(api)
    _housekeeping_pass(api)
    assert _summaries(_events(api.rt.db, start)) == {"auth_required": 8}


# --- the service on its own -----------------------------------------------------------------------------------
def _refuse(rt, now_us: int, code: str = "token_invalid", addr: str = "10.0.0.7") -> denials.Verdict:
    meta = audit.RequestMeta(client_addr=addr, user_agent="ua", request_id="r")
    with rt.db.session() as s:
        return denials.refused(s, rt.settings, now_us, meta, audit.Event("camera.list", "denied", reason=code))


def test_racing_summarisers_summarise_each_bucket_once(runtime) -> None:
    now = 1_800_000_000 * US
    for addr in ("10.0.0.1", "10.0.0.2", "2001:db8:1:2::5", "2001:db8:1:2::6"):
        for _ in range(3):
            _refuse(runtime, now, addr=addr)
    later = now + runtime.settings.denial_bucket_seconds * US
    barrier = threading.Barrier(8)

    def summarise(_: int) -> int:
        barrier.wait()
        with runtime.db.session() as s:
            return denials.summarise(
                s, runtime.settings, later, before_us=denials.bucket_start(runtime.settings, later)
            )[1]

    with ThreadPoolExecutor(8) as pool:
        written = list(pool.map(summarise, range(8)))
    events = _events(runtime.db)
    summaries = [e for e in events if e.action == denials.SUMMARY_ACTION]
    assert sum(written) == len(summaries) == 3  # one IPv6 /64 is one address
    assert sorted((e.client_addr, SUMMARY.match(e.reason)[1]) for e in summaries) == [
        ("10.0.0.1", "3"),
        ("10.0.0.2", "3"),
        ("2001:db8:1:2::/64", "6"),
    ]


def test_a_refusal_into_a_summarised_bucket_counts_in_the_next_slot_and_past_the_last_is_its_own_event(
    runtime,
) -> None:
    now = 1_800_000_000 * US
    for round_ in range(denials.SLOTS + 1):
        expected = [True, False] if round_ < denials.SLOTS else [True, True]
        assert [_refuse(runtime, now).own_event for _ in range(2)] == expected
        with runtime.db.session() as s:
            denials.summarise(s, runtime.settings, now, before_us=None)
    events = _events(runtime.db)
    own = [e for e in events if e.action == "camera.list"]
    assert _summaries(events) == {"token_invalid": 2 * denials.SLOTS}
    assert len(own) == denials.SLOTS + 2  # the first of each slot, and both refusals past the last slot
    total = sum(_summaries(events).values()) + 2
    assert total == 2 * (denials.SLOTS + 1)


def test_the_limit_counts_per_address_and_resets_with_the_bucket(runtime) -> None:
    now = 1_800_000_000 * US
    now -= now % (runtime.settings.denial_bucket_seconds * US)
    limit = denials.limit_per_bucket(runtime.settings)
    verdicts = [_refuse(runtime, now + i, code=("a", "b")[i % 2]) for i in range(limit + 2)]
    assert [v.rate_limited for v in verdicts] == [False] * limit + [True, True]
    assert verdicts[-1].retry_after_s == runtime.settings.denial_bucket_seconds
    assert not _refuse(runtime, now, addr="10.0.0.8").rate_limited
    assert not _refuse(runtime, now + runtime.settings.denial_bucket_seconds * US).rate_limited
