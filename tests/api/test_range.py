"""Seekable playback over HTTP: Range requests get exact slices of the one assembled stream, and a player's range
requests of one viewing are one audited playback session (one read pin, one stream of the grant, one
``playback.start``, one ``playback.end`` with the bytes of them all). A real server (uvicorn) over real segment
files; the session's idle end uses the injected clock and the server's own housekeeping loop."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from nvr.clock import iso
from nvr.models import AuditEvent, ReadPin
from tests.api.conftest import Api
from tests.api.test_races import parallel
from tests.support.api_server import running_api
from tests.support.footage import CLIP_SECONDS

V1 = "/api/v1"
SEG_US = CLIP_SECONDS * 1_000_000
PLAY = f"{V1}/cameras/cam-a/playback"


def _setup(api: Api, segments: int = 6, max_streams: int = 1) -> tuple[list[int], dict[str, Any]]:
    starts = api.camera("cam-a", segments=segments)
    api.user("boss", ["approver"])
    api.user("olga", ["officer"])
    grant = api.grant("boss", "olga", ["cam-a"], max_streams=max_streams)
    return starts, grant


def _params(starts: list[int], n: int | None = None) -> dict[str, str]:
    end = starts[-1] + SEG_US if n is None else starts[n]
    return {"start": iso(starts[0]) or "", "end": iso(end) or "", "purpose": "seek test"}


def _ticket(api: Api, starts: list[int]) -> str:
    with api.client("olga") as c:
        r = c.post(f"{V1}/cameras/cam-a/playback-tickets", json=_params(starts))
    assert r.status_code == 201, r.text
    return str(r.json()["url"])


def _events(api: Api, action: str, outcome: str | None = None) -> list[AuditEvent]:
    with api.rt.db.session() as s:
        q = select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
        if outcome is not None:
            q = q.where(AuditEvent.outcome == outcome)
        return list(s.scalars(q))


def _pins(api: Api) -> list[ReadPin]:
    with api.rt.db.session() as s:
        return list(s.scalars(select(ReadPin)))


def _wait(predicate: Any, what: str, timeout: float = 10.0) -> None:
    """The server records a request's end just after its last byte leaves: the client may have it all before."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _idle(api: Api) -> None:
    """Let the session's idle time pass (injected clock) and wait for two rounds of the server's housekeeping."""
    loop = api.app_state().session_housekeeping
    api.clock.advance(api.rt.settings.playback_session_idle_seconds + 1)
    done = loop.passes
    loop.wake()
    assert loop.wait_passes(done + 2, timeout=10)


def _code(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["error"]["code"]


def test_ranges_are_exact_slices_of_the_same_stream(api: Api) -> None:
    starts, _ = _setup(api, max_streams=4)
    with api.client("olga") as c:
        full = c.get(PLAY, params=_params(starts))
        assert full.status_code == 200 and full.headers["accept-ranges"] == "bytes"
        body, tag = full.content, full.headers["etag"]
        total = len(body)
        assert tag.startswith('"') and int(full.headers["content-length"]) == total
        again = c.get(PLAY, params=_params(starts))
        assert again.content == body and again.headers["etag"] == tag  # the same bytes for the same window
        other = c.get(PLAY, params=_params(starts, 3))
        assert other.headers["etag"] != tag
        cases = {
            "bytes=0-0": (0, 0),
            "bytes=0-": (0, total - 1),
            f"bytes={total - 1}-": (total - 1, total - 1),
            f"bytes={total // 3}-{total // 2}": (total // 3, total // 2),  # across segment boundaries
            f"bytes={total // 2}-{total * 5}": (total // 2, total - 1),  # a last byte past the end is clipped
            "bytes=-1000": (total - 1000, total - 1),
            f"bytes=-{total * 2}": (0, total - 1),
            "bytes = 10-20,": (10, 20),  # an empty list element is no second range
        }
        for header, (first, last) in cases.items():
            r = c.get(PLAY, params=_params(starts), headers={"Range": header})
            assert r.status_code == 206, (header, r.text[:200])
            assert r.headers["content-range"] == f"bytes {first}-{last}/{total}"
            assert int(r.headers["content-length"]) == last - first + 1
            assert r.headers["etag"] == tag and r.headers["accept-ranges"] == "bytes"
            assert r.content == body[first : last + 1], header
        mid = {"Range": "bytes=100-199"}
        same = c.get(PLAY, params=_params(starts), headers={**mid, "If-Range": tag})
        assert same.status_code == 206 and same.content == body[100:200]
        stale = c.get(PLAY, params=_params(starts), headers={**mid, "If-Range": '"another-version"'})
        assert stale.status_code == 200 and stale.content == body and "content-range" not in stale.headers


def test_bad_ranges_get_416_with_a_stable_code_and_a_denial(api: Api) -> None:
    starts, _ = _setup(api, max_streams=2)
    with api.client("olga") as c:
        total = len(c.get(PLAY, params=_params(starts)).content)
        for header in ("bytes=5-1", "bytes=abc", "items=0-5", "bytes=", "bytes=-", "0-5", "bytes=1-2-3"):
            r = c.get(PLAY, params=_params(starts), headers={"Range": header})
            assert _code(r) == (416, "range_invalid"), header
        r = c.get(PLAY, params=_params(starts), headers={"Range": "bytes=0-10,20-30"})
        assert _code(r) == (416, "range_unsupported") and "several ranges" in r.json()["error"]["message"]
        for header in (f"bytes={total}-", f"bytes={total + 10}-{total + 20}", "bytes=-0"):
            r = c.get(PLAY, params=_params(starts), headers={"Range": header})
            assert _code(r) == (416, "range_not_satisfiable"), header
            assert r.headers["content-range"] == f"bytes */{total}"
            assert r.headers["content-type"] == "application/json"
    denied = [e.reason for e in _events(api, "playback.start", "denied")]
    assert denied == ["range_invalid"] * 7 + ["range_unsupported"] + ["range_not_satisfiable"] * 3
    _idle(api)  # the refused range requests opened a session that never streamed: no start, no end of it
    assert [e.reason for e in _events(api, "playback.end")] == [None]  # only the plain request's own end
    assert len(_events(api, "playback.start", "allowed")) == 1 and _pins(api) == []


def test_a_tickets_range_requests_are_one_audited_session(api: Api) -> None:
    starts, _ = _setup(api)
    url = _ticket(api, starts)
    with api.client() as anon:  # a <video src>: no Authorization header, the same URL for every range
        first = anon.get(url, headers={"Range": "bytes=0-"})
        assert first.status_code == 206
        total = int(first.headers["content-range"].rsplit("/", 1)[1])
        sizes = [len(first.content)]
        for header in (f"bytes={total // 2}-", "bytes=1000-1999", f"bytes={total - 10}-"):
            r = anon.get(url, headers={"Range": header})
            assert r.status_code == 206, r.text[:200]
            sizes.append(len(r.content))
        # Without a Range header a used ticket is used: a plain request never joins (nor opens) a session.
        assert _code(anon.get(url)) == (401, "ticket_used")
    (start,) = _events(api, "playback.start", "allowed")
    assert start.actor_id == api.ids["olga"] and "; session; ticket " in str(start.reason)
    _wait(lambda: _pins(api) and _pins(api)[0].active == 0, "the last request's end was not recorded")
    (pin,) = _pins(api)
    assert (pin.kind, pin.requests, pin.bytes_sent) == ("session", 4, sum(sizes))
    assert _events(api, "playback.end") == []  # open: a player may seek again
    _idle(api)
    (end,) = _events(api, "playback.end")
    assert (end.outcome, end.bytes, end.actor_id) == ("ok", sum(sizes), api.ids["olga"])
    assert end.reason == f"session: 4 range request(s), playback.start #{start.seq}"
    assert _pins(api) == []
    with api.client() as anon:  # the session is over: the ticket never opens a second one
        assert _code(anon.get(url, headers={"Range": "bytes=0-"})) == (401, "ticket_used")


def test_another_address_cannot_join_a_tickets_session(api: Api) -> None:
    starts, _ = _setup(api)
    url = _ticket(api, starts)
    with api.client() as anon:
        assert anon.get(url, headers={"Range": "bytes=0-99"}).status_code == 206
    elsewhere = httpx.HTTPTransport(local_address="127.0.0.2")  # another client address on the loopback
    with httpx.Client(base_url=api.url, transport=elsewhere, timeout=30) as other:
        assert _code(other.get(url, headers={"Range": "bytes=100-199"})) == (401, "ticket_used")
        assert _code(other.get(url)) == (401, "ticket_used")
    denied = _events(api, "playback.start", "denied")
    assert [(e.reason, e.client_addr, e.actor_id) for e in denied] == [
        ("ticket_used", "127.0.0.2", api.ids["olga"])
    ] * 2
    assert len(_events(api, "playback.start", "allowed")) == 1


def test_parallel_range_requests_are_one_stream_of_the_grant(api: Api) -> None:
    starts, _ = _setup(api, segments=8, max_streams=1)
    url = _ticket(api, starts)
    n = 12

    def seek(i: int) -> tuple[int, int, str]:
        with api.client() as anon:
            r = anon.get(url, headers={"Range": f"bytes={i * 1000}-{i * 1000 + 4999}"})
            return r.status_code, len(r.content), r.headers.get("content-range", r.text[:100])

    results = parallel(n, seek)
    assert [status for status, _, _ in results] == [206] * n, results
    assert len(_events(api, "playback.start", "allowed")) == 1
    _wait(lambda: _pins(api)[0].active == 0, "the requests' ends were not recorded")
    (pin,) = _pins(api)  # one session: one pin, counted once against max_streams = 1
    assert (pin.requests, pin.bytes_sent) == (n, sum(size for _, size, _ in results))
    with api.client("olga") as c:  # the grant's one stream is the open session
        assert _code(c.get(PLAY, params=_params(starts))) == (429, "stream_limit")
    _idle(api)
    (end,) = _events(api, "playback.end", "ok")
    assert end.bytes == n * 5000 and f"{n} range request(s)" in str(end.reason)
    with api.client("olga") as c:  # the session is over: the stream is free again
        assert c.get(PLAY, params=_params(starts)).status_code == 200


def test_bearer_range_requests_join_one_session_and_plain_requests_stay_their_own(api: Api) -> None:
    starts, _ = _setup(api, max_streams=2)
    with api.client("olga") as c:
        sizes = [
            len(c.get(PLAY, params=_params(starts), headers={"Range": h}).content) for h in ("bytes=0-", "bytes=-500")
        ]
        plain = c.get(PLAY, params=_params(starts))  # no Range: a stream of its own, as always
        assert plain.status_code == 200
        _wait(lambda: len(_events(api, "playback.end")) == 1, "the plain stream's end was not recorded")
        other_window = c.get(PLAY, params=_params(starts, 2), headers={"Range": "bytes=0-9"})  # another session
        assert other_window.status_code == 206
        # Both sessions and nothing else hold the grant's two streams.
        assert _code(c.get(PLAY, params=_params(starts, 3), headers={"Range": "bytes=0-9"})) == (429, "stream_limit")
    starts_allowed = _events(api, "playback.start", "allowed")
    assert [str(e.reason).endswith("; session") for e in starts_allowed] == [True, False, True]
    _idle(api)
    ends = sorted((e.bytes, e.reason.split(",")[0] if e.reason else None) for e in _events(api, "playback.end"))
    assert ends == sorted(
        [(len(plain.content), None), (sum(sizes), "session: 2 range request(s)"), (10, "session: 1 range request(s)")]
    )


def test_a_suspension_ends_the_session_and_its_running_request(api: Api) -> None:
    starts, grant = _setup(api, segments=400)  # ~30 MB: more than the socket buffers hold
    url = _ticket(api, starts)
    received = 0
    with api.client() as anon, anon.stream("GET", url, headers={"Range": "bytes=0-"}) as r:
        assert r.status_code == 206
        length = int(r.headers["content-length"])
        chunks = r.iter_bytes(65536)
        received += len(next(chunks))
        with api.client("boss") as boss:
            assert boss.post(f"{V1}/grants/{grant['id']}/suspend", json={"reason": "stop"}).status_code == 200
        # Read at a pace that leaves the server's ~1 s re-check time to come round (30 MB take > 4 s).
        with pytest.raises(httpx.RemoteProtocolError):  # closed short of its Content-Length
            for chunk in chunks:
                received += len(chunk)
                time.sleep(0.01)
    assert received < length
    _wait(lambda: len(_events(api, "playback.end")) == 1, "the session did not end")
    (end,) = _events(api, "playback.end")
    assert end.outcome == "terminated" and str(end.reason).startswith("grant_suspended; session: 1 range request(s)")
    assert 0 < (end.bytes or 0) <= length and _pins(api) == []
    with api.client() as anon:
        assert anon.get(url, headers={"Range": "bytes=0-"}).status_code in (401, 403)


def test_an_idle_session_of_a_suspended_grant_is_ended_by_housekeeping(api: Api) -> None:
    starts, grant = _setup(api)
    url = _ticket(api, starts)
    with api.client() as anon:
        assert anon.get(url, headers={"Range": "bytes=0-99"}).status_code == 206
    _wait(lambda: _pins(api)[0].active == 0, "the request's end was not recorded")
    with api.client("boss") as boss:
        assert boss.post(f"{V1}/grants/{grant['id']}/suspend", json={"reason": "stop"}).status_code == 200
    loop = api.app_state().session_housekeeping
    done = loop.passes
    loop.wake()
    assert loop.wait_passes(done + 2, timeout=10)  # no clock change: the grant, not the idle time, ends it
    (end,) = _events(api, "playback.end")
    assert (end.outcome, end.bytes) == ("terminated", 100) and str(end.reason).startswith("grant_suspended; ")
    assert _pins(api) == []


def test_parallel_first_range_requests_of_a_bearer_open_one_session(api: Api) -> None:
    starts, _ = _setup(api, max_streams=16)
    n = 12
    lock = threading.Lock()
    sizes: list[int] = []

    def seek(i: int) -> int:
        with api.client("olga") as c:
            r = c.get(PLAY, params=_params(starts), headers={"Range": f"bytes={i}-{i + 99}"})
            with lock:
                sizes.append(len(r.content))
            return r.status_code

    assert parallel(n, seek) == [206] * n
    assert len(_events(api, "playback.start", "allowed")) == 1
    _wait(lambda: _pins(api)[0].active == 0, "the requests' ends were not recorded")
    (pin,) = _pins(api)
    assert (pin.requests, pin.bytes_sent) == (n, 100 * n)


def test_a_server_that_stops_closes_its_idle_sessions(api: Api) -> None:
    starts, _ = _setup(api)
    url = _ticket(api, starts)
    with running_api(api.rt, api.clock) as other:  # a second API process on the same database, stopped below
        with httpx.Client(base_url=other, timeout=30) as anon:
            assert anon.get(url, headers={"Range": "bytes=0-99"}).status_code == 206
        _wait(lambda: _pins(api)[0].active == 0, "the request's end was not recorded")
    (end,) = _events(api, "playback.end")  # written at shutdown, not 30 s later by another process
    assert (end.outcome, end.bytes) == ("ok", 100) and _pins(api) == []
