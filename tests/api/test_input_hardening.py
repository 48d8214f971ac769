"""Bad input and stored oddities (issue #12, "Bad input"): times outside 2000..2200 are refused with 422
``time_invalid`` wherever a time is taken, nothing stored in the audit trail can make a read of it fail, the CSV
export neutralises every cell a spreadsheet would run as a formula, and camera ids in ``/capacity`` and
``/metrics`` follow the camera listing's visibility.

Everything goes through the real server of the ``api`` fixture; stored oddities are written straight into the
database, through the audit writer (so the chain stays valid) or by hand (so it does not)."""

from __future__ import annotations

import csv
import io
import random
import re
from typing import Any

import pytest
from sqlalchemy import select, text

from api.routes.capacity import visible_view
from integrity import audit_log
from nvr import registry
from nvr.clock import MAX_US, MIN_US, check_time, iso, parse_iso
from nvr.errors import NvrError
from nvr.models import AuditEvent
from tests.api.conftest import DAY_US

S = 1_000_000
AUDIT = "/api/v1/audit"

# Times outside the accepted range, each a way a hostile or careless client could send one.
BAD_TIMES = {
    "past year 9999 once in UTC": "9999-12-31T23:59:59-01:00",
    "year 9999": "9999-12-31T23:59:59Z",
    "year 0001": "0001-01-01T00:00:00Z",
    "year 0001 with an offset": "0001-01-01T00:30:00+01:00",
    "the epoch": "1970-01-01T00:00:00Z",
    "just before 2000": "1999-12-31T23:59:59.999999Z",
    "2200 exactly": "2200-01-01T00:00:00Z",
    "2200 reached through an offset": "2199-12-31T23:30:00-01:00",
}

# Values in the BigInteger range that an old build, a hand edit or a clock set far off could have stored.
EXTREMES = [
    -(2**63),
    -62_135_596_800_000_001,  # the last microsecond of year 0000 (1 BC)
    -62_135_596_800_000_000,  # 0001-01-01
    -1,
    0,
    253_402_300_800_000_000,  # 10000-01-01
    253_402_304_399_000_000,  # 9999-12-31T23:59:59-01:00
    2**63 - 1,
]


# --- an independent calendar, to check nvr.clock.iso against ---------------------------------------------------
def _civil_from_days(z: int) -> tuple[int, int, int]:
    """Howard Hinnant's days-to-civil algorithm (proleptic Gregorian, astronomical years)."""
    z += 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return (y + 1 if m <= 2 else y), m, d


def _reference_iso(us: int) -> str:
    days, rest = divmod(us, DAY_US)
    y, m, d = _civil_from_days(days)
    secs, micro = divmod(rest, S)
    year = f"{y:04d}" if 0 <= y <= 9999 else f"{'+' if y > 0 else '-'}{abs(y):06d}"
    return f"{year}-{m:02d}-{d:02d}T{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}.{micro:06d}Z"


def test_every_integer_has_one_text_form() -> None:
    rng = random.Random(12)
    samples = [*EXTREMES, MIN_US, MAX_US - 1, 1_700_000_000_123_456]
    samples += [rng.randint(-(2**63), 2**63 - 1) for _ in range(2000)]
    samples += [rng.randint(-62_135_596_800_000_000, 253_402_300_799_999_999) for _ in range(2000)]
    for us in samples:
        assert iso(us) == _reference_iso(us), us
    # The documented examples.
    assert iso(2**63 - 1) == "+294247-01-10T04:00:54.775807Z"
    assert iso(253_402_300_800_000_000) == "+010000-01-01T00:00:00.000000Z"
    assert iso(-62_135_596_800_000_001) == "0000-12-31T23:59:59.999999Z"
    assert iso(-62_167_219_200_000_001) == "-000001-12-31T23:59:59.999999Z"
    assert iso(None) is None
    # Not an integer at all (a hand-edited SQLite row): still text, never an exception.
    assert iso("abc") == "invalid:'abc'"  # type: ignore[arg-type]
    assert iso(float("inf")) == "invalid:inf"  # type: ignore[arg-type]


def test_parse_iso_accepts_exactly_2000_to_2200() -> None:
    assert parse_iso("2000-01-01T00:00:00Z") == MIN_US
    assert parse_iso("2199-12-31T23:59:59.999999Z") == MAX_US - 1
    assert parse_iso("2000-01-01T08:00:00+08:00") == MIN_US
    for name, value in BAD_TIMES.items():
        with pytest.raises(NvrError) as e:
            parse_iso(value)
        assert e.value.code == "time_invalid", name
    with pytest.raises(NvrError) as e:
        check_time(MAX_US, "valid_until")
    assert e.value.code == "time_invalid" and "2200-01-01T00:00:00.000000Z" in e.value.message
    assert check_time(MIN_US) == MIN_US


# --- times as input -----------------------------------------------------------------------------------------------
def _positions(api, t0: int) -> list[tuple[str, str, str, Any]]:
    """(who, method, path, request with one ``BAD`` placeholder): every place the API takes a time."""
    ok_start, ok_end, later = iso(t0), iso(t0 + 4 * S), iso(api.clock.now_us() + 7 * DAY_US)
    rec = "/api/v1/cameras/cam-1/recordings"
    play = "/api/v1/cameras/cam-1/playback"
    ticket = "/api/v1/cameras/cam-1/playback-tickets"
    purpose = "investigation of incident 42"
    grant = {
        "user_id": api.ids["officer"],
        "cameras": ["cam-1"],
        "actions": ["playback"],
        "window": {"start": ok_start, "end": ok_end},
        "valid_until": later,
        "purpose": purpose,
        "case_ref": "CASE-1",
    }
    hold = {"case_ref": "CASE-1", "title": "t", "reason": "r", "cameras": ["cam-1"], "start": ok_start, "end": ok_end}
    export = {
        "cameras": ["cam-1"],
        "start": ok_start,
        "end": ok_end,
        "purpose": purpose,
        "case_ref": "CASE-1",
        "legal_basis": "letter 7",
        "recipient": "court",
        "destination": "court clerk",
    }

    def body(base: dict[str, Any], *path: str) -> dict[str, Any]:
        out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
        inner = out
        for key in path[:-1]:
            inner = inner[key]
        inner[path[-1]] = "BAD"
        return out

    request_body = {k: v for k, v in grant.items() if k != "user_id"}
    return [
        ("officer", "GET", rec, {"params": {"start": "BAD", "end": ok_end}}),
        ("officer", "GET", rec, {"params": {"start": ok_start, "end": "BAD"}}),
        ("officer", "GET", play, {"params": {"start": "BAD", "end": ok_end, "purpose": purpose}}),
        ("officer", "GET", play, {"params": {"start": ok_start, "end": "BAD", "purpose": purpose}}),
        ("officer", "POST", ticket, {"json": {"start": "BAD", "end": ok_end, "purpose": purpose}}),
        ("officer", "POST", ticket, {"json": {"start": ok_start, "end": "BAD", "purpose": purpose}}),
        ("officer", "POST", "/api/v1/access-requests", {"json": body(request_body, "valid_until")}),
        ("officer", "POST", "/api/v1/access-requests", {"json": body(request_body, "window", "start")}),
        ("officer", "POST", "/api/v1/access-requests", {"json": body(request_body, "window", "end")}),
        ("approver", "POST", "/api/v1/grants", {"json": body(grant, "valid_until")}),
        ("approver", "POST", "/api/v1/grants", {"json": body(grant, "valid_from")}),
        ("approver", "POST", "/api/v1/grants", {"json": body(grant, "window", "start")}),
        ("approver", "POST", "/api/v1/grants", {"json": body(grant, "window", "end")}),
        ("approver", "POST", "/api/v1/holds", {"json": body(hold, "start")}),
        ("approver", "POST", "/api/v1/holds", {"json": body(hold, "end")}),
        ("officer", "POST", "/api/v1/holds", {"json": body(hold, "end")}),
        ("officer", "POST", "/api/v1/exports", {"json": body(export, "start")}),
        ("officer", "POST", "/api/v1/exports", {"json": body(export, "end")}),
        ("auditor", "GET", AUDIT, {"params": {"since": "BAD"}}),
        ("auditor", "GET", AUDIT, {"params": {"until": "BAD"}}),
        ("auditor", "GET", AUDIT, {"params": {"since": "BAD", "format": "csv"}}),
    ]


def _fill(request: dict[str, Any], value: str) -> dict[str, Any]:
    def sub(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: sub(v) for k, v in x.items()}
        return value if x == "BAD" else x

    return sub(request)


def _assert_stored_windows_sane(api) -> None:
    with api.rt.db.session() as s:
        rows = s.execute(select(AuditEvent.seq, AuditEvent.window_start_us, AuditEvent.window_end_us)).all()
    odd = [r for r in rows if any(v is not None and not MIN_US <= v < MAX_US for v in r[1:])]
    assert odd == [], "a refused request stored a time outside the accepted range"


def test_every_time_input_refuses_out_of_range_times_with_time_invalid(api) -> None:
    t0 = api.camera("cam-1", segments=3)[0]
    api.user("officer", ["officer"])
    api.user("approver", ["approver"])
    api.user("auditor", ["auditor"])
    api.grant("approver", "officer", ["cam-1"], actions=["playback", "export"])
    seen = []
    clients = {who: api.client(who) for who in ("officer", "approver", "auditor")}
    try:
        # The edges of the range are times like any other; a window inside it is served.
        edges = {"since": "2000-01-01T00:00:00Z", "until": "2199-12-31T23:59:59.999999Z"}
        assert clients["auditor"].get(AUDIT, params=edges).status_code == 200
        window = {"start": iso(t0), "end": iso(t0 + 4 * S)}
        r = clients["officer"].get("/api/v1/cameras/cam-1/recordings", params=window)
        assert r.status_code == 200, r.text
        # (So many refusals may well raise a repeated-denials alert: the time is refused before any grant check.)
        for who, method, path, request in _positions(api, t0):
            for name, value in BAD_TIMES.items():
                r = clients[who].request(method, path, **_fill(request, value))
                seen.append((who, method, path, name, r.status_code, r.json()["error"]["code"]))
    finally:
        for c in clients.values():
            c.close()
    wrong = [x for x in seen if x[4:] != (422, "time_invalid")]
    assert wrong == [], wrong
    # Each refusal is one denial event, and none of them stored the refused time.
    _assert_stored_windows_sane(api)
    with api.client("auditor") as c:
        assert c.get(AUDIT, params={"limit": 10000}).status_code == 200
        assert c.get(AUDIT, params={"limit": 10000, "format": "csv"}).status_code == 200


def test_an_anonymous_year_0001_window_stores_nothing_a_read_chokes_on(api) -> None:
    """The issue's case: one anonymous request with a year-0001 window made every later page of the trail 500."""
    api.camera("cam-1")
    api.user("auditor", ["auditor"])
    bad = {"start": "0001-01-01T00:00:00Z", "end": "0001-01-01T01:00:00Z", "purpose": "x"}
    with api.client() as anonymous:
        assert anonymous.get("/api/v1/cameras/cam-1/recordings", params=bad).status_code == 401
        assert anonymous.get("/api/v1/cameras/cam-1/playback", params=bad).status_code == 401
    # A known user's refused request (it reached the route, so its window was parsed and refused).
    api.user("officer", ["officer"])
    with api.client("officer") as officer:
        end = {"start": iso(api.clock.now_us()), "end": "9999-12-31T23:59:59-01:00"}
        r = officer.get("/api/v1/cameras/cam-1/recordings", params=end)
        assert (r.status_code, r.json()["error"]["code"]) == (422, "time_invalid")
    _assert_stored_windows_sane(api)
    with api.client("auditor") as c:
        r = c.get(AUDIT)
        assert r.status_code == 200, r.text
        assert any(e["action"] == "recordings.list" and e["outcome"] == "denied" for e in r.json()["events"])
        assert c.get(AUDIT, params={"format": "csv"}).status_code == 200


# --- stored oddities ----------------------------------------------------------------------------------------------
def _write_events(api, events: list[tuple[int, audit_log.Event]]) -> list[int]:
    """Append events through the audit writer with the given ``at_us``: the chain stays valid."""
    with api.rt.db.session() as s:
        return [
            audit_log.record(s, at_us, audit_log.ANONYMOUS, audit_log.RequestMeta("10.0.0.9", "ua", None), ev)
            for at_us, ev in events
        ]


def test_extreme_stored_times_never_make_the_trail_unreadable(api) -> None:
    api.user("auditor", ["auditor"])
    seqs = _write_events(
        api, [(v, audit_log.Event("test.extreme", "denied", window_start_us=v, window_end_us=-v - 1)) for v in EXTREMES]
    )
    with api.client("auditor") as c:
        r = c.get(AUDIT, params={"action": "test.extreme"})
        assert r.status_code == 200, r.text
        events = r.json()["events"]
        assert [e["seq"] for e in events] == seqs
        for e, v in zip(events, EXTREMES, strict=True):
            assert (e["at_us"], e["at"]) == (v, _reference_iso(v))
            assert (e["window_start_us"], e["window_start"]) == (v, _reference_iso(v))
            assert (e["window_end_us"], e["window_end"]) == (-v - 1, _reference_iso(-v - 1))
        # Paging across them, and a time filter beside them.
        page = c.get(AUDIT, params={"after_seq": seqs[2], "limit": 2})
        assert page.status_code == 200 and [e["seq"] for e in page.json()["events"]] == seqs[3:5]
        assert c.get(AUDIT, params={"since": "2000-01-01T00:00:00Z"}).status_code == 200
        r = c.get(AUDIT, params={"action": "test.extreme", "format": "csv"})
        assert r.status_code == 200, r.text
        rows = list(csv.DictReader(io.StringIO(r.text, newline="")))
        assert [int(row["seq"]) for row in rows] == seqs
        for row, v in zip(rows, EXTREMES, strict=True):
            at = _reference_iso(v)
            assert row["at"] == ("'" + at if at.startswith(("-", "+")) else at)
            assert int(row["window_start_us"]) == v
        # The chain still verifies: the values are odd, not tampered with.
        v = c.get(f"{AUDIT}/verify")
        assert v.status_code == 200 and v.json()["ok"] is True, v.text


def test_a_hand_edited_row_is_shown_and_named_never_a_server_error(api) -> None:
    api.user("auditor", ["auditor"])
    (seq,) = _write_events(api, [(api.clock.now_us(), audit_log.Event("test.edited", "ok", purpose="p"))])
    with api.rt.db.engine.begin() as conn:
        # Someone with write access: a time no calendar can show, on either database.
        conn.execute(text("UPDATE audit_events SET window_start_us = :v WHERE seq = :s"), {"v": 2**63 - 1, "s": seq})
        if conn.dialect.name == "sqlite":
            # SQLite keeps whatever type it is given: text in an integer column, a float, bytes in a text column.
            conn.execute(
                text("UPDATE audit_events SET at_us = 'abc', window_end_us = 1.5, purpose = :b WHERE seq = :s"),
                {"b": b"\xff\xfe=cmd", "s": seq},
            )
        else:
            conn.execute(text("UPDATE audit_events SET at_us = :v WHERE seq = :s"), {"v": -(2**63), "s": seq})
    with api.client("auditor") as c:
        r = c.get(AUDIT, params={"action": "test.edited"})
        assert r.status_code == 200, r.text
        (e,) = r.json()["events"]
        assert e["window_start"] == "+294247-01-10T04:00:54.775807Z"
        assert e["at"] in ("invalid:'abc'", "-290308-12-21T19:59:05.224192Z")
        r = c.get(AUDIT, params={"action": "test.edited", "format": "csv"})
        assert r.status_code == 200, r.text
        v = c.get(f"{AUDIT}/verify")
        assert v.status_code == 200, v.text
        assert v.json()["ok"] is False and v.json()["problem"]["seq"] == seq
        assert v.json()["problem"]["kind"] == "edited"


# --- CSV ----------------------------------------------------------------------------------------------------------
FORMULAS = [
    "=1+1",
    "+1",
    "-2+3",
    "@SUM(A1:A2)",
    " =1+1",
    "  +1",
    "\u00a0=1+1",  # NBSP
    "\u3000=1+1",  # ideographic space
    "\u2003=1",  # em space
    "\u202f@x",  # narrow NBSP
    "\u2028=1",  # line separator
    "\u200b=1",  # zero-width space (a format character)
    "\ufeff=1",  # BOM
    "\u200e-1",  # left-to-right mark
    "\x01=1",
    "\x1f+1",
    "\x7f@x",
    "\n=1+1",
    "\r=1+1",
    "\r\n=1",
    ' \t =HYPERLINK("http://x")',
    "\t",
    "\tplain",
    "\rplain",
    "\nplain",
    "\uff1d1+1",  # full-width =
    "\uff0b1",  # full-width +
    "\uff0d1",  # full-width -
    "\uff20x",  # full-width @
    "\u3000\uff1d1",
    "\ufe661",  # small =
    "\u22121",  # minus sign
]
HARMLESS = ["plain text", "a=b", "x - y", "ops@example.com", "1+1", "é=1", "'=already quoted"]


def test_csv_neutralises_every_cell_a_spreadsheet_would_run(api) -> None:
    api.user("auditor", ["auditor"])
    api.user("officer", ["officer"])
    values = FORMULAS + HARMLESS
    seqs = _write_events(
        api,
        [
            (
                api.clock.now_us(),
                audit_log.Event("test.csv", "denied", purpose=v, reason=v, case_ref=v, destination=v, object_id=v),
            )
            for v in values
        ],
    )
    # And through the real path: a refused request's purpose is attacker text too (403, the officer reads no trail).
    with api.client("officer") as officer:
        for v in values:
            assert officer.get(AUDIT, params={"purpose": v}).status_code == 403
    with api.client("auditor") as c:
        r = c.get(AUDIT, params={"format": "csv", "limit": 10000})
        assert r.status_code == 200, r.text
        j = c.get(AUDIT, params={"limit": 10000}).json()["events"]
    rows = {int(row["seq"]): row for row in csv.DictReader(io.StringIO(r.text, newline=""))}
    by_seq = {e["seq"]: e for e in j}
    denials = [e["seq"] for e in j if e["action"] == "audit.read" and e["outcome"] == "denied"]
    assert len(denials) == len(values)

    def expect(v: str) -> str:
        return "'" + v if v in FORMULAS else v

    for seq, v in zip(seqs, values, strict=True):
        row = rows[seq]
        for col in ("purpose", "reason", "case_ref", "destination", "object_id"):
            assert row[col] == expect(v), (col, v)
        assert by_seq[seq]["purpose"] == v, "the JSON form is never altered"
    for seq, v in zip(denials, values, strict=True):
        assert rows[seq]["purpose"] == expect(v), v
    # And no cell of the whole export starts (after what a spreadsheet skips) with a formula character unquoted.
    skip = re.compile(r"^[\s\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202f\u2060\ufeff]*")
    for row in rows.values():
        for col, cell in row.items():
            rest = skip.sub("", cell)
            assert not (
                rest[:1] in set("=+-@\uff1d\uff0b\uff0d\uff20\ufe66\ufe62\ufe63\ufe6b\u2212")
                and not cell.startswith("'")
            ), (col, cell)
            assert not cell.startswith(("\t", "\r", "\n")), (col, cell)


# --- camera visibility in /capacity and /metrics ------------------------------------------------------------------
def _activate(api, *camera_ids: str) -> None:
    with api.rt.db.session() as s:
        for cid in camera_ids:
            registry.transition(s, cid, "active", actor="test", now_us=api.clock.now_us())


def _metric_cameras(text_: str) -> set[str]:
    return set(re.findall(r'\{camera="([^"]+)"', text_))


def test_capacity_and_metrics_name_only_cameras_the_caller_may_see(api) -> None:
    for cid in ("cam-1", "cam-2", "cam-3"):
        api.camera(cid, segments=2 if cid != "cam-3" else 0)
    _activate(api, "cam-1", "cam-2", "cam-3")
    api.user("admin", ["admin"])
    api.user("approver", ["approver"])
    api.user("auditor", ["auditor"])
    api.user("op-none", ["operator"])
    api.user("op-one", ["operator"])
    api.grant("approver", "op-one", ["cam-1"])
    everything = {"cam-1", "cam-2", "cam-3"}
    expected = {
        "admin": everything,
        "approver": everything,
        "auditor": set(),
        "op-none": set(),
        "op-one": {"cam-1"},
    }
    totals = {}
    for who, cams in expected.items():
        with api.client(who) as c:
            listed = {x["id"] for x in c.get("/api/v1/cameras").json()["cameras"]}
            assert listed == cams, who  # the rule /capacity follows
            r = c.get("/api/v1/capacity")
            assert r.status_code == 200, r.text
            f = r.json()
            named = {x["camera"] for x in f["cameras"]} | {w["camera"] for w in f["warnings"]}
            named |= {cid for v in f["volumes"] for cid in v["cameras"]}
            assert {x["camera"] for x in f["cameras"]} == cams, who
            assert named <= cams, who
            totals[who] = [(v["footage_bytes"], v["bytes_per_day"]) for v in f["volumes"]]
            if who != "approver" and who != "auditor":  # system.monitor: admins and operators
                m = c.get("/api/v1/metrics")
                assert m.status_code == 200, m.text
                assert _metric_cameras(m.text) == cams, who
                assert "nvr_storage_full_cameras" in m.text
    # The volumes' totals count every camera's footage, whoever reads them.
    assert len({tuple(t) for t in totals.values()}) == 1
    # The reads are audited, naming how much was shown.
    with api.rt.db.session() as s:
        reasons = list(s.scalars(select(AuditEvent.reason).where(AuditEvent.action == "capacity.read")))
    assert "0 warning(s), 1 visible camera(s)" in reasons and "0 warning(s), all cameras" in reasons


def test_visible_view_drops_hidden_cameras_from_every_part_of_the_forecast() -> None:
    view = {
        "at": "2026-01-01T00:00:00.000000Z",
        "volumes": [{"id": "v1", "footage_bytes": 10, "cameras": ["a", "b"]}],
        "cameras": [{"camera": "a"}, {"camera": "b"}],
        "warnings": [{"code": "policy_unmeetable", "camera": "b"}, {"code": "policy_unmeetable", "camera": "a"}],
    }
    assert visible_view(view, None) == view
    shown = visible_view(view, {"a"})
    assert shown["volumes"] == [{"id": "v1", "footage_bytes": 10, "cameras": ["a"]}]
    assert shown["cameras"] == [{"camera": "a"}]
    assert shown["warnings"] == [{"code": "policy_unmeetable", "camera": "a"}]
    assert visible_view(view, set())["warnings"] == []


# --- text no database can store -------------------------------------------------------------------------------------
def test_nul_and_lone_surrogates_are_refused_as_request_invalid_and_audited(api) -> None:
    """PostgreSQL text cannot hold a NUL and neither database can encode a lone surrogate: before, a NUL in a query
    filter or a purpose was a server error on PostgreSQL (the query or the audit write failed)."""
    api.camera("cam-1")
    api.user("auditor", ["auditor"])
    api.user("officer", ["officer"])
    now = api.clock.now_us()
    request_body = {
        "cameras": ["cam-1"],
        "actions": ["playback"],
        "window": {"last_days": 2},
        "valid_until": iso(now + DAY_US),
        "purpose": "a\x00b",
        "case_ref": "CASE-1",
    }
    surrogate = (
        b'{"cameras": ["cam-1"], "actions": ["playback"], "window": {"last_days": 2}, "valid_until": "%s", '
        % (iso(now + DAY_US) or "").encode()
        + b'"purpose": "\\ud800", "case_ref": "CASE-1"}'
    )
    with api.client("auditor") as auditor, api.client("officer") as officer, api.client() as anonymous:
        answers = [
            auditor.get(AUDIT, params={"action": "a\x00b"}),
            auditor.get(AUDIT, params={"camera_id": "\x00", "purpose": "why\x00"}),
            auditor.get(AUDIT, params={"x\x00": "1"}),
            officer.get("/api/v1/holds", params={"case_ref": "\x00"}),
            officer.get("/api/v1/cameras/cam%001"),
            officer.post("/api/v1/access-requests", json=request_body),
            officer.post("/api/v1/access-requests", json={**request_body, "purpose": "p", "cameras": ["c\x00"]}),
            officer.post("/api/v1/access-requests", content=surrogate, headers={"Content-Type": "application/json"}),
            anonymous.post("/api/v1/auth/login", json={"username": "a\x00", "password": "x"}),
        ]
        assert [(r.status_code, r.json()["error"]["code"]) for r in answers] == [(422, "request_invalid")] * len(
            answers
        ), [r.text for r in answers]
        r = auditor.get(AUDIT, params={"outcome": "denied", "limit": 10000})
        assert r.status_code == 200, r.text
    denied = [e for e in r.json()["events"] if e["reason"] == "request_invalid"]
    # One denial each (the anonymous one too: the first of its kind in its bucket), with the bad characters replaced.
    assert len(denied) == len(answers)
    assert {"get /api/v1/audit", "get /api/v1/cameras/cam\ufffd1"} <= {e["action"] for e in denied}
    assert "why\ufffd" in {e["purpose"] for e in denied}
    # A logged-in person's refusal names them, as every other refusal of theirs does.
    by_action = {(e["action"], e["actor_id"]) for e in denied}
    assert ("get /api/v1/audit", api.ids["auditor"]) in by_action
    assert ("get /api/v1/cameras/cam\ufffd1", api.ids["officer"]) in by_action
