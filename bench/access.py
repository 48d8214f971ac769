"""Access-check benchmark: the grant check plus the audit write of one footage request, with and without the
abnormal-use rules (api.alerts), over an audit trail of a realistic size, on SQLite and on PostgreSQL.

Database (built fresh for every run, dropped afterwards unless ``--keep``), through the product's own functions
where they exist:

* ``--cameras`` cameras (``bench-000`` ...) with ``nvr.registry.add``, unit "Bench", share class ``authorized``;
  an approver and an officer (the bench user, a personal token) with ``api.people``; one grant with
  ``api.grants.create``: every camera, ``playback``, footage window the last 31 days, valid 364 days, 16 streams.
* An audit trail of ``--history`` events over the ``--history-days`` (30) days before the measurement: the bench
  user's own ``--user-events-per-day`` (200: a heavy user; 97 % ``playback.start`` spread over every camera, so
  every camera is in the user's usual set, 3 % refusals) and the rest from ``--others`` (200) other users (70 %
  ``playback.start``, 10 % ``recordings.list``, 10 % ``camera.read``, 10 % refusals, random cameras). The rows
  are chained as ``integrity.audit_log.record`` chains them (``integrity.audit_chain.link``) and bulk-loaded
  (SQLite ``executemany`` in one transaction; PostgreSQL ``COPY``, then ``VACUUM ANALYZE``, what autovacuum does
  after a large load); ``audit_head`` is left at the last one, so ``nvr audit verify`` passes.
* The clock is a ``FakeClock`` that starts on a weekday-independent fixed hour, 09:00 UTC (inside working hours
  for the default ``alert_off_hours`` 22-06 and ``site_timezone`` UTC: the figures do not depend on when the
  benchmark runs), and moves ``--gap-seconds`` after every request.

Measurement, in this process, one session per request as the API makes it (``with db.session()``: commit included),
the two variants interleaved request by request (their order alternating), after ``--warmup`` discarded pairs:

* ``grant_audit``: ``grants.authorize(...)`` + ``audit.record(...)`` + commit: the issue's figure, no rules.
* ``grant_audit_rules``: ``grants.authorize(...)`` + ``alerts.record(...)`` (``audit.record``, then one statement
  reading the user's open alerts and the measures of their last hour, and every rule judged) + commit, with the
  default rule settings. ``rules_added`` is the difference of the two p50s (also the median of the paired
  differences).
* ``typical``: 5-minute windows on ``--usual`` (8) cameras, a request every ``--gap-seconds`` (30 s): the user's last
  hour holds about 120 retrievals, a very busy reviewer, and no rule fires.
* ``worst``: each request on the next of all ``--cameras`` cameras, one every 40 s, so every request is the
  camera's first of the hour while the hour already holds more than ``alert_unusual_cameras_per_hour`` cameras:
  the unusual-camera probe (a look into the user's 30 days) runs on every request. ``alert_cameras_per_hour`` is
  raised to 10,000 for this phase, or ``camera_spread`` would suspend the grant after 20 cameras.
* ``judge_only`` (typical state): ``alerts._judge`` alone, timed inside the transaction right after the event's
  append, as ``alerts.record`` runs it: the rules' statements and Python, without the commit.
* ``denial``: a refused request's event, ``audit.record`` against ``alerts.record`` (the ``repeated_denials``
  count); ``alert_denials_per_hour`` raised to 10,000 so that the count is made every time rather than skipped
  once an alert is open.

Then a check that the rules were not vacuous: with ``alert_cameras_per_hour`` 2, three requests on three cameras
raise ``camera_spread``, suspend the grant, and the next ``grants.authorize`` is refused ``grant_suspended``.

Usage (from the repository root)::

    .venv/bin/python bench/access.py --db both                 # the documented figures (docs/performance.md)
    .venv/bin/python bench/access.py --quick                   # a few seconds; tests/test_bench_quick.py runs it
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the project, ahead of bench/ (this script's folder, where catalogue.py is)

from catalogue import (  # noqa: E402
    database_size,
    drop_catalogue,
    fresh_catalogue,
    log,
    machine,
    pg_url,
    postgres_version,
    settings_for,
    write_result,
)

from integrity.audit_chain import HASHED_FIELDS  # noqa: E402

US = 1_000_000
HOUR_US = 3600 * US
DAY_US = 86_400 * US
Timed = tuple[float, float]  # one request: wall ms, this thread's CPU ms
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
PURPOSE = "benchmark: access check"
GOALS = {"grant_audit_rules": {"p50": 2.0}, "rules_added": {"p50": 0.5}}
QUICK = {"cameras": 12, "usual": 4, "history": 20_000, "others": 20, "user_events_per_day": 40, "requests": 40}
AUDIT_COLUMNS = HASHED_FIELDS  # the chain links every column but its own two (prev_hash, hash)


# --- the database ----------------------------------------------------------------------------------------------------
def start_us() -> int:
    """09:00 UTC of yesterday: a fixed hour of the working day, whatever time the benchmark runs."""
    day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    return int(dt.datetime(day.year, day.month, day.day, 9, tzinfo=dt.UTC).timestamp()) * US


def next_nine(now_us: int) -> int:
    """09:00 UTC of the day after ``now_us``."""
    day = dt.datetime.fromtimestamp(now_us / US, dt.UTC).date() + dt.timedelta(days=1)
    return int(dt.datetime(day.year, day.month, day.day, 9, tzinfo=dt.UTC).timestamp()) * US


def history(args: argparse.Namespace, user_id: int, first_seq: int, prev_hash: str, t0: int) -> Iterator[tuple]:
    """The audit rows before ``t0``, oldest first, chained from ``prev_hash``."""
    from integrity import audit_chain

    rng = random.Random(args.seed)
    cams = [f"bench-{i:03d}" for i in range(args.cameras)]
    span = args.history_days * DAY_US
    own = min(args.history, args.user_events_per_day * args.history_days)
    times = sorted(t0 - span + rng.randrange(span) for _ in range(args.history))
    mine = set(rng.sample(range(args.history), own))
    seq, prev = first_seq, prev_hash
    for i, at in enumerate(times):
        if i in mine:
            actor, name = user_id, "Bench Officer (bench-officer)"
            kind = "playback" if rng.random() < 0.97 else "denied"
        else:
            actor = 1_000_000 + rng.randrange(args.others)
            name = f"Other {actor} (other-{actor})"
            r = rng.random()
            kind = "playback" if r < 0.7 else "listing" if r < 0.8 else "read" if r < 0.9 else "denied"
        cam = rng.choice(cams)
        a = at - rng.randrange(1, 7 * DAY_US)
        action, outcome, reason, w0, w1 = {
            "playback": ("playback.start", "allowed", "segments 1..5", a, a + 300 * US),
            "listing": ("recordings.list", "allowed", None, a, a + DAY_US),
            "read": ("camera.read", "allowed", None, None, None),
            "denied": ("playback.start", "denied", "outside_grant_window", a, a + 300 * US),
        }[kind]
        row = {
            "seq": seq,
            "at_us": at,
            "actor_id": actor,
            "actor_name": name,
            "actor_unit": "Bench",
            "actor_roles": "officer",
            "action": action,
            "camera_id": cam,
            "window_start_us": w0,
            "window_end_us": w1,
            "object_id": "grant:1" if outcome == "allowed" else None,
            "purpose": PURPOSE,
            "case_ref": "BENCH-1",
            "destination": None,
            "outcome": outcome,
            "reason": reason,
            "client_addr": "10.0.0.7",
            "user_agent": "bench/access",
            "request_id": uuid.UUID(int=rng.getrandbits(128)).hex,
            "bytes": None,
        }
        digest = audit_chain.link(prev, row)
        yield (*(row[c] for c in AUDIT_COLUMNS), prev, digest)
        seq, prev = seq + 1, digest


def load_history(kind: str, url: str, db_path: Path, rows: Iterator[tuple]) -> tuple[int, str, int]:
    """Insert the rows; set ``audit_head`` to the last. Returns (head seq, head hash, rows)."""
    cols = (*AUDIT_COLUMNS, "prev_hash", "hash")
    last: tuple = ()
    n = 0

    def counted() -> Iterator[tuple]:
        nonlocal last, n
        for r in rows:
            last, n = r, n + 1
            yield r

    if kind == "sqlite":
        conn = sqlite3.connect(db_path, isolation_level=None)
        try:
            conn.execute("BEGIN")
            conn.executemany(f"INSERT INTO audit_events ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
                             counted())  # fmt: skip
            conn.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (last[0], last[-1]))
            conn.execute("COMMIT")
        finally:
            conn.close()
    else:
        import psycopg

        def text(v: object) -> str:
            return "\\N" if v is None else str(v)

        with psycopg.connect(url) as pg:
            cur = pg.cursor()
            with cur.copy(f"COPY audit_events ({','.join(cols)}) FROM STDIN") as copy:
                batch: list[str] = []
                for r in counted():
                    batch.append("\t".join(map(text, r)) + "\n")
                    if len(batch) >= 10_000:
                        copy.write("".join(batch).encode())
                        batch.clear()
                copy.write("".join(batch).encode())
            cur.execute("UPDATE audit_head SET seq = %s, hash = %s WHERE id = 1", (last[0], last[-1]))
            pg.commit()
        with psycopg.connect(url, autocommit=True) as pg:
            pg.execute("VACUUM ANALYZE")
    return int(last[0]), str(last[-1]), n


def build(args: argparse.Namespace, kind: str, db_dir: Path, url: str, clock: Any) -> dict[str, Any]:
    from sqlalchemy import select

    from api import grants, people
    from api.grants import GrantSpec
    from nvr import registry
    from nvr.models import AuditHead
    from nvr.runtime import Runtime

    fresh_catalogue(args, kind, db_dir)
    t = time.perf_counter()
    rt = Runtime.open(settings_for(db_dir, url), clock=clock)
    now = clock.now_us()
    password = uuid.uuid4().hex + "-bench"
    with rt.db.session() as s:
        approver = people.create_user(
            s, username="bench-approver", full_name="Bench Approver", staff_number="B-1", unit="Bench",
            roles=["approver"], password=password, now_us=now,
        )  # fmt: skip
        officer = people.create_user(
            s, username="bench-officer", full_name="Bench Officer", staff_number="B-2", unit="Bench",
            roles=["officer"], password=password, now_us=now,
        )  # fmt: skip
        _, approver_secret = people.issue_token(s, approver, "personal", "bench", now_us=now, expires_us=now + DAY_US)
        _, officer_secret = people.issue_token(
            s, officer, "personal", "bench", now_us=now, expires_us=now + 30 * DAY_US
        )
        officer_id = officer.id
        head_seq, head_hash = s.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)).one()
    rt.db.dispose()
    log(f"{kind}: {args.history:,} audit events over {args.history_days} days ({args.others} other users)")
    t_hist = time.perf_counter()
    seq, _, n = load_history(
        kind, url, db_dir / "nvr.db", history(args, officer_id, int(head_seq) + 1, str(head_hash), now)
    )
    hist_s = time.perf_counter() - t_hist
    cams = [f"bench-{i:03d}" for i in range(args.cameras)]
    with rt.db.session() as s:
        for c in cams:
            registry.add(
                s, c, registry.CameraFields(name=f"Bench camera {c}", stream_url=f"rtsp://127.0.0.1/{c}",
                                            managing_unit="Bench", share_class="authorized"),
                actor="bench", now_us=now,
            )  # fmt: skip
    with rt.db.session() as s:
        grantor = people.authenticate(s, approver_secret, now)
        spec = GrantSpec(
            user_id=officer_id, cameras=cams, actions=["playback"], purpose="access benchmark", case_ref="BENCH-1",
            valid_until_us=now + 364 * DAY_US, window_last_days=31, max_streams=16,
        )  # fmt: skip
        grant_id = grants.create(s, grantor, spec, now).id
    rt.db.dispose()
    return {
        "officer_token": officer_secret,
        "grant_id": grant_id,
        "history_events": n,
        "audit_head_after_history": seq,
        "history_seconds": round(hist_s, 1),
        "build_seconds": round(time.perf_counter() - t, 1),
    }


# --- statistics ----------------------------------------------------------------------------------------------------
def percentile(sorted_values: list[float], q: float) -> float:
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summary(name: str, values_ms: list[float]) -> dict[str, Any]:
    v = sorted(values_ms)
    out: dict[str, Any] = {
        "n": len(v),
        "p50": round(percentile(v, 0.50), 3),
        "p90": round(percentile(v, 0.90), 3),
        "p99": round(percentile(v, 0.99), 3),
        "max": round(v[-1], 3),
        "mean": round(statistics.fmean(v), 3),
    }
    goal = GOALS.get(name)
    if goal:
        out["goal_ms"] = goal
        out["pass"] = all(out[k] <= limit for k, limit in goal.items())
    return out


# --- measurement ---------------------------------------------------------------------------------------------------
def measure(url: str, args: argparse.Namespace, built: dict[str, Any], clock: Any) -> dict[str, Any]:
    from sqlalchemy import select

    from api import alerts, audit, grants, people
    from nvr.config import Settings
    from nvr.db import Database
    from nvr.errors import NvrError
    from nvr.models import Alert

    db = Database(url)
    rng = random.Random(args.seed + 1)
    cams = [f"bench-{i:03d}" for i in range(args.cameras)]
    try:
        with db.session() as s:
            principal = people.authenticate(s, built["officer_token"], clock.now_us())
        actor = principal.actor
        defaults = Settings(data_dir=Path(tempfile.gettempdir()), database_url=url)

        def window() -> tuple[int, int]:
            now = clock.now_us()
            a = now - rng.randrange(HOUR_US, 7 * DAY_US)
            return a, a + 300 * US

        def request(settings: Settings | None, cam: str) -> Timed:
            a, b = window()
            meta = audit.RequestMeta("10.0.0.7", "bench/access", uuid.uuid4().hex)
            t0, c0 = time.perf_counter(), time.thread_time()
            with db.session() as s:
                now = clock.now_us()
                g = grants.authorize(s, principal, cam, "playback", a, b, now)
                ev = audit.Event(
                    "playback.start", "allowed", camera_id=cam, window_start_us=a, window_end_us=b,
                    object_id=f"grant:{g.id}", purpose=PURPOSE, case_ref=g.case_ref, reason="bench",
                )  # fmt: skip
                if settings is None:
                    audit.record(s, now, actor, meta, ev)
                else:
                    alerts.record(s, settings, now, actor, meta, ev)
            return (time.perf_counter() - t0) * 1000, (time.thread_time() - c0) * 1000

        def denial(settings: Settings | None, cam: str) -> Timed:
            a, b = window()
            meta = audit.RequestMeta("10.0.0.7", "bench/access", uuid.uuid4().hex)
            ev = audit.Event("playback.start", "denied", camera_id=cam, window_start_us=a, window_end_us=b,
                             purpose=PURPOSE, reason="outside_grant_window")  # fmt: skip
            t0, c0 = time.perf_counter(), time.thread_time()
            with db.session() as s:
                now = clock.now_us()
                if settings is None:
                    audit.record(s, now, actor, meta, ev)
                else:
                    alerts.record(s, settings, now, actor, meta, ev)
            return (time.perf_counter() - t0) * 1000, (time.thread_time() - c0) * 1000

        def pairs(fn: Callable[[Settings | None, str], Timed], settings: Settings, camera: Callable[[int], str],
                  gap_s: float) -> tuple[list[Timed], list[Timed]]:  # fmt: skip
            off: list[Timed] = []
            on: list[Timed] = []
            k = 0
            for i in range(args.warmup + args.requests):
                order = (None, settings) if i % 2 == 0 else (settings, None)
                for variant in order:
                    ms = fn(variant, camera(k))
                    k += 1
                    clock.advance(gap_s)
                    if i >= args.warmup:
                        (off if variant is None else on).append(ms)
            return off, on

        figures: dict[str, Any] = {}
        phases: dict[str, Any] = {}
        usual = cams[: args.usual]
        spread = defaults.model_copy(update={"alert_cameras_per_hour": 10_000})
        quiet_denials = defaults.model_copy(update={"alert_denials_per_hour": 10_000})
        for phase, fn, settings, camera, gap in (
            ("typical", request, defaults, lambda k: rng.choice(usual), args.gap_seconds),
            ("worst", request, spread, lambda k: cams[k % len(cams)], 40.0),
            ("denial", denial, quiet_denials, lambda k: rng.choice(usual), args.gap_seconds),
        ):
            clock.advance((next_nine(clock.now_us()) - clock.now_us()) / US)  # each phase in a working day
            log(f"  {phase}: {args.requests} pairs after {args.warmup}")
            off, on = pairs(fn, settings, camera, gap)
            base = "grant_audit" if fn is request else "denial_audit"
            a, b = summary(base, [w for w, _ in off]), summary(f"{base}_rules", [w for w, _ in on])
            a["cpu_p50"] = round(statistics.median(c for _, c in off), 3)
            b["cpu_p50"] = round(statistics.median(c for _, c in on), 3)
            diffs = sorted(y[0] - x[0] for x, y in zip(off, on, strict=True))
            added = {
                "p50": round(b["p50"] - a["p50"], 3),
                "paired_median": round(percentile(diffs, 0.5), 3),
                "cpu_p50": round(b["cpu_p50"] - a["cpu_p50"], 3),
            }
            added["goal_ms"] = GOALS["rules_added"]
            added["pass"] = added["p50"] <= GOALS["rules_added"]["p50"]
            if fn is request:
                b["goal_ms"] = GOALS["grant_audit_rules"]
                b["pass"] = b["p50"] <= GOALS["grant_audit_rules"]["p50"]
            phases[phase] = {base: a, f"{base}_rules": b, "rules_added": added}
            with db.session() as s:
                opened = [r for (r,) in s.execute(select(Alert.rule).where(Alert.state == "open"))]
            if opened:
                raise SystemExit(f"{phase}: the rules fired ({opened}); the phase would not measure what it says")
        figures = phases

        # The judgement alone (alerts._judge: the statements of the rules and their Python), inside the
        # transaction right after the event's append, as alerts.record runs it; commit excluded.
        clock.advance((next_nine(clock.now_us()) - clock.now_us()) / US)
        judge_ms: list[float] = []
        for i in range(args.warmup + args.requests):
            cam = rng.choice(usual)
            w0, w1 = window()
            with db.session() as s:
                now = clock.now_us()
                g = grants.authorize(s, principal, cam, "playback", w0, w1, now)
                ev = audit.Event(
                    "playback.start", "allowed", camera_id=cam, window_start_us=w0, window_end_us=w1,
                    object_id=f"grant:{g.id}", purpose=PURPOSE, case_ref=g.case_ref, reason="bench",
                )  # fmt: skip
                audit.record(s, now, actor, audit.RequestMeta("10.0.0.7", "bench/access", uuid.uuid4().hex), ev)
                t0 = time.perf_counter()
                later = alerts._judge(s, defaults, now, actor, ev)
                if i >= args.warmup:
                    judge_ms.append((time.perf_counter() - t0) * 1000)
            if later:
                raise SystemExit(f"judge: the rules fired ({later[0].reason})")
            clock.advance(args.gap_seconds)
        figures["typical"]["judge_only"] = summary("judge_only", judge_ms)

        # Not vacuous: the same path raises an alert and suspends the grant.
        tight = defaults.model_copy(update={"alert_cameras_per_hour": 2})
        clock.advance(2 * 3600)
        for cam in cams[-3:]:
            request(tight, cam)
        w0, w1 = window()
        with db.session() as s:
            raised = [r for (r,) in s.execute(select(Alert.rule).where(Alert.state == "open"))]
            try:
                grants.authorize(s, principal, cams[0], "playback", w0, w1, clock.now_us())
                refused = None
            except NvrError as exc:
                refused = exc.code
        if raised != ["camera_spread"] or refused != "grant_suspended":
            raise SystemExit(f"the rules did not work: alerts {raised}, next request {refused}")
        check = "camera_spread raised on the third camera with alert_cameras_per_hour=2; next request grant_suspended"
        return {"figures_ms": figures, "check": check}
    finally:
        db.dispose()


def run_one(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    from nvr.clock import FakeClock

    db_dir = args.data_dir / kind
    url = pg_url(args.pg_admin_url, args.pg_database) if kind == "postgresql" else f"sqlite:///{db_dir / 'nvr.db'}"
    clock = FakeClock(start_us=start_us())
    log(f"{kind}: building in {db_dir}")
    built = build(args, kind, db_dir, url, clock)
    log(f"{kind}: built in {built['build_seconds']} s; database {database_size(args, kind, db_dir) / 2**20:,.0f} MiB")
    measured = measure(url, args, built, clock)
    return {
        "db": kind,
        "database": f"SQLite {sqlite3.sqlite_version}"
        if kind == "sqlite"
        else f"PostgreSQL {postgres_version(args.pg_admin_url)}",
        "params": {k: getattr(args, k) for k in ("cameras", "usual", "history", "history_days", "others",
                                                   "user_events_per_day", "requests", "warmup", "gap_seconds", "seed")},
        "build": {k: v for k, v in built.items() if k != "officer_token"},
        "database_bytes": database_size(args, kind, db_dir),
        "method": "in process, one session per request (commit included); rules off and on interleaved request by "
        "request, order alternating; FakeClock from 09:00 UTC, advanced after every request",
        **measured,
    }  # fmt: skip


def table(result: dict[str, Any]) -> str:
    lines = [
        "| phase | metric | n | p50 ms | p90 ms | p99 ms | max ms | CPU p50 ms | goal | met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for phase, figs in result["figures_ms"].items():
        for name, f in figs.items():
            goal = ", ".join(f"{k} ≤ {v:g}" for k, v in f.get("goal_ms", {}).items()) or "-"
            met = {True: "yes", False: "**no**"}.get(f.get("pass"), "-")  # type: ignore[arg-type]
            if name == "judge_only":
                cells = f"{f['n']} | {f['p50']:.3f} | {f['p90']:.3f} | {f['p99']:.3f} | {f['max']:.3f} | -"
            elif name == "rules_added":
                cells = f"- | {f['p50']:.3f} (paired median {f['paired_median']:.3f}) | - | - | - | {f['cpu_p50']:.3f}"
            else:
                cells = (
                    f"{f['n']} | {f['p50']:.3f} | {f['p90']:.3f} | {f['p99']:.3f} | {f['max']:.3f} | {f['cpu_p50']:.3f}"
                )
            lines.append(f"| {phase} | {name} | {cells} | {goal} | {met} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--db", choices=("sqlite", "postgresql", "both"), default=None, help="default: both (--quick: sqlite)"
    )
    p.add_argument("--cameras", type=int, default=100)
    p.add_argument("--usual", type=int, default=8, help="cameras of the typical phase")
    p.add_argument("--history", type=int, default=1_000_000, help="audit events before the measurement")
    p.add_argument("--history-days", type=int, default=30)
    p.add_argument("--others", type=int, default=200, help="other users in the history")
    p.add_argument("--user-events-per-day", type=int, default=200, help="the bench user's own events in the history")
    p.add_argument("--requests", type=int, default=400, help="measured requests of each variant per phase")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--gap-seconds", type=float, default=30.0, help="fake time between requests (typical, denial)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true",
                   help=f"{QUICK['history']:,} events, {QUICK['cameras']} cameras, {QUICK['requests']} requests; "
                   "results under --data-dir unless --out")  # fmt: skip
    p.add_argument("--data-dir", type=Path, default=None, help="default: $TMPDIR/nvr-bench-access[-quick]")
    p.add_argument("--keep", action="store_true", help="keep the databases")
    p.add_argument("--pg-admin-url", default=PG_ADMIN_URL, help="an existing database to create the bench one from")
    p.add_argument("--pg-database", default=None, help="default: nvr_bench_access[_quick]")
    p.add_argument(
        "--out", default=None, help="'{db}' becomes sqlite/postgresql; default bench/results/access-{db}.json"
    )
    args = p.parse_args()
    suffix = "-quick" if args.quick else ""
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
        args.warmup = min(args.warmup, 5)
    args.db = args.db or ("sqlite" if args.quick else "both")
    args.data_dir = (args.data_dir or Path(tempfile.gettempdir()) / f"nvr-bench-access{suffix}").expanduser().absolute()
    args.pg_database = args.pg_database or f"nvr_bench_access{suffix.replace('-', '_')}"
    if args.out is None:
        args.out = str(args.data_dir / "access-{db}.json") if args.quick else "bench/results/access-{db}.json"
    if args.usual < 1 or args.cameras <= max(args.usual, 6) or args.requests < 1:
        raise SystemExit("--cameras must exceed --usual and 6; --usual and --requests must be at least 1")
    mach = machine()
    for kind in ["sqlite", "postgresql"] if args.db == "both" else [args.db]:
        try:
            result = run_one(args, kind)
        finally:
            if not args.keep:
                drop_catalogue(args, kind, ignore_errors=True)
        result, out = write_result("access", args.out, kind, mach, result)
        print(f"\n{kind} ({result['database']}): {result['build']['history_events']:,} audit events; results in {out}")
        print(table(result) + "\n")
        print(result["check"] + "\n", flush=True)


if __name__ == "__main__":
    main()
