"""Playback tickets: one ticket, one stream (requests without ``Range``; a player's range requests are one session of
the ticket, from the claiming address only: tests/api/test_range.py); never served or audited under its owner when
another user's token comes with it. (Parallel uses of one ticket: tests/api/test_races.py; a real browser:
tests/api/test_browser.py.)"""

from __future__ import annotations

import time

import httpx
from sqlalchemy import select

from nvr.clock import iso
from nvr.models import AuditEvent, PlaybackTicket, ReadPin
from tests.api.conftest import Api
from tests.support.footage import CLIP_SECONDS

V1 = "/api/v1"
SEG_US = CLIP_SECONDS * 1_000_000


def _setup(api: Api, segments: int = 4, max_streams: int = 2) -> list[int]:
    starts = api.camera("cam-a", segments=segments)
    api.user("boss", ["approver"])
    api.user("olga", ["officer"])
    api.user("bob", ["officer"])
    api.grant("boss", "olga", ["cam-a"], max_streams=max_streams)
    api.grant("boss", "bob", ["cam-a"], max_streams=max_streams)
    return starts


def _ticket(api: Api, who: str, start_us: int, end_us: int) -> tuple[str, int]:
    body = {"start": iso(start_us), "end": iso(end_us), "purpose": "video element"}
    with api.client(who) as c:
        r = c.post(f"{V1}/cameras/cam-a/playback-tickets", json=body)
    assert r.status_code == 201, r.text
    with api.rt.db.session() as s:
        ticket_id = max(s.scalars(select(PlaybackTicket.id)))
    return r.json()["url"], ticket_id


def _code(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"]


def _starts(api: Api) -> list[AuditEvent]:
    with api.rt.db.session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == "playback.start").order_by(AuditEvent.seq)))


def _used(api: Api, ticket_id: int) -> int | None:
    with api.rt.db.session() as s:
        t = s.get(PlaybackTicket, ticket_id)
        assert t is not None
        return t.used_us


def test_a_ticket_opens_one_stream_and_a_second_use_is_refused(api: Api) -> None:
    starts = _setup(api)
    url, tid = _ticket(api, "olga", starts[0], starts[2])
    with api.client() as anon:
        first = anon.get(url)
        assert first.status_code == 200 and first.headers["content-type"] == "video/mp4"
        assert _code(anon.get(url)) == (401, "ticket_used")
        # Not even with the owner's own token: a ticket is used up, whoever brings it back.
    with api.client("olga") as c:
        assert _code(c.get(url)) == (401, "ticket_used")
    assert _used(api, tid) is not None
    allowed, *denied = _starts(api)
    assert (allowed.outcome, allowed.actor_id, allowed.reason.endswith(f"; ticket {tid}")) == (
        "allowed",
        api.ids["olga"],
        True,
    )
    assert [(e.outcome, e.actor_id, e.reason, e.object_id) for e in denied] == [
        ("denied", api.ids["olga"], "ticket_used", f"ticket:{tid}")
    ] * 2


def test_a_refused_start_leaves_the_ticket_unused(api: Api) -> None:
    starts = _setup(api, segments=400, max_streams=1)  # ~30 MB: the first stream stays open
    url, tid = _ticket(api, "olga", starts[0], starts[2])
    params = {"start": iso(starts[0]), "end": iso(starts[-1] + SEG_US), "purpose": "busy"}
    with api.client("olga") as c, c.stream("GET", f"{V1}/cameras/cam-a/playback", params=params) as busy:
        assert busy.status_code == 200
        chunks = busy.iter_bytes(1024)  # keep the iterator: dropping it would close the connection
        next(chunks)
        with api.client() as anon:
            assert _code(anon.get(url)) == (429, "stream_limit")
        assert _used(api, tid) is None
    deadline = time.monotonic() + 10
    while True:
        with api.rt.db.session() as s:
            if s.scalar(select(ReadPin.id)) is None:
                break
        assert time.monotonic() < deadline, "the first stream's pin stayed"
        time.sleep(0.05)
    with api.client() as anon:
        assert anon.get(url).status_code == 200
    assert _used(api, tid) is not None


def test_a_ticket_with_another_users_token_is_refused_and_audited_under_that_user(api: Api) -> None:
    starts = _setup(api)
    url, tid = _ticket(api, "olga", starts[0], starts[2])
    with api.client("bob") as c:  # bob holds a grant for the camera himself: still not with olga's ticket
        assert _code(c.get(url)) == (403, "ticket_not_yours")
    (denied,) = _starts(api)
    assert (denied.outcome, denied.actor_id, denied.reason, denied.object_id) == (
        "denied",
        api.ids["bob"],
        "ticket_not_yours",
        f"ticket:{tid}",
    )
    with api.client() as anon:  # a broken token does not fall back to the ticket either
        r = anon.get(url, headers={"Authorization": "Bearer nvrs_forged"})
        assert _code(r) == (401, "token_invalid")
    assert _used(api, tid) is None  # refused before it was used: olga's video element still plays
    with api.client() as anon:
        assert anon.get(url).status_code == 200
    assert [e.actor_id for e in _starts(api) if e.outcome == "allowed"] == [api.ids["olga"]]


def test_a_ticket_with_its_owners_token_is_that_tokens_request_and_uses_the_ticket(api: Api) -> None:
    starts = _setup(api)
    url, tid = _ticket(api, "olga", starts[0], starts[2])
    with api.client("olga") as c:
        r = c.get(url)
        assert r.status_code == 200
        assert _code(c.get(url)) == (401, "ticket_used")
    with api.client() as anon:
        assert _code(anon.get(url)) == (401, "ticket_used")
    (allowed,) = [e for e in _starts(api) if e.outcome == "allowed"]
    assert allowed.actor_id == api.ids["olga"] and allowed.request_id == r.headers["x-request-id"]
    with api.rt.db.session() as s:
        t = s.get(PlaybackTicket, tid)
        assert t is not None and t.used_addr == "127.0.0.1"


def test_a_ticket_is_still_bound_to_its_request_and_its_lifetime(api: Api) -> None:
    starts = _setup(api)
    url, tid = _ticket(api, "olga", starts[0], starts[2])
    with api.client() as anon:
        assert _code(anon.get(url.replace("purpose=video+element", "purpose=other"))) == (401, "ticket_mismatch")
        assert _code(anon.get(url.replace("/cam-a/", "/cam-b/"))) == (401, "ticket_mismatch")
        assert _used(api, tid) is None  # a mismatch does not use the ticket up
        api.clock.advance(api.rt.settings.playback_ticket_seconds + 1)
        assert _code(anon.get(url)) == (401, "ticket_invalid")
    assert _used(api, tid) is None


def test_a_ticket_used_by_a_plain_stream_never_opens_a_range_session(api: Api) -> None:
    starts = _setup(api)
    url, _ = _ticket(api, "olga", starts[0], starts[2])
    with api.client() as anon:
        assert anon.get(url).status_code == 200  # a stream without Range: the ticket's one use
        assert _code(anon.get(url, headers={"Range": "bytes=0-"})) == (401, "ticket_used")
    assert [e.outcome for e in _starts(api)] == ["allowed", "denied"]
