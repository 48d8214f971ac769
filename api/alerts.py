"""Abnormal-use detection: rules over the audit stream, alerts, automatic suspension and an approver's review.

Every audit event of a logged-in user goes through :func:`record` (``Ctx.record``, the denial recorder in
``api.app`` and the services that write a retrieval themselves, ``api.export_jobs.download``, call it), which
appends it and then judges it against the rules, in the event's own transaction:

- footage retrievals (``playback.start``, ``live.start``, ``export.download``, outcome allowed/ok): the volume of
  footage (``footage_volume``: hours, the union of the windows per camera, in the last hour), the number of cameras
  (``camera_spread``, last hour), off-hours access (``off_hours``, the site's local hours), cameras outside the
  user's usual set (``unusual_cameras``) and, for downloads, the number of destinations (``many_destinations``,
  last 24 hours);
- refusals (outcome ``denied``): ``repeated_denials`` in the last hour.

The event itself counts, so the request that crosses a limit raises the alert. A rule that fires raises one open
:class:`~nvr.models.Alert` per (user, rule) and an ``alert.raise`` event; when the rule is in
``settings.alert_suspend_rules`` the same transaction suspends every active grant of the user (``state_reason``
``alert:<id> <rule>``), each with a ``grant.suspend`` event, so their next footage request is refused
(``grant_suspended``) and running streams end at their next check. While such an alert is open, any grant of the
user that is active again (a new one, or one resumed by hand) is suspended into it at their next footage request or
refusal. An approver other than the user reviews the alert (:func:`review`): ``restore`` resumes the grants it
still holds, ``uphold`` leaves them suspended.

Concurrency: appending takes the audit head, which every writer of the trail holds in turn until it commits
(integrity.audit_log). The judgement runs after the append, so it sees every event committed before, the user's
parallel requests included, and no other judgement or review runs meanwhile: parallel requests are counted one by
one, and at most one alert per (user, rule) is open. A review appends its event first for the same reason. Grants
are locked after the head, the opposite order of a grant changed by hand (grant, then head): :func:`_take_grants`
waits only briefly for a locked grant (PostgreSQL), so the two never deadlock. The SQL uses the index
``ix_audit_actor`` (actor_id, at_us) over ``audit_events``; the common case is one statement. See
docs/security/abnormal-use.md.
"""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from api import audit
from api.people import Principal
from nvr.clock import iso
from nvr.config import ALERT_RULES, Settings, parse_off_hours
from nvr.errors import Kind, NvrError
from nvr.models import Alert, AuditEvent, Grant, User

RULES = ALERT_RULES
FOOTAGE_ACTIONS = ("playback.start", "live.start", "export.download")
"""Retrievals: footage that leaves the server for a person. ``live.start`` counts once a live route writes it."""
RETRIEVED = ("allowed", "ok")
DOWNLOAD = "export.download"
STATES = ("open", "restored", "upheld")
DECISIONS = {"restore": "restored", "uphold": "upheld"}
READ_CAPABILITIES = ("grants.issue", "audit.read", "users.manage")
"""Approvers (who review), auditors (who oversee) and admins (who manage people) may read alerts."""
REVIEW_CAPABILITY = "grants.issue"
HOUR_US = 3600 * 1_000_000
DAY_US = 24 * HOUR_US
MAX_ID = 2**62


# --- the one entry point: an event of a user, judged in its own transaction -----------------------------------
def record(
    s: Session, settings: Settings, now_us: int, actor: audit.Actor, meta: audit.RequestMeta, ev: audit.Event
) -> int:
    """Append ``ev`` (``audit.record``), then judge it against the rules; returns its sequence number. Alerts raised
    by it, and the suspensions, are appended right after it, in the same transaction.

    Appending takes the audit head, which every writer of the audit trail takes in turn, until commit: the judgement
    that follows sees every event committed before this one, the person's parallel requests included, and no other
    judgement runs until this transaction ends."""
    seq = audit.record(s, now_us, actor, meta, ev)
    judged = _judge(s, settings, now_us, actor, ev)
    if judged:
        system_meta = audit.RequestMeta(audit.INTERNAL.client_addr, audit.INTERNAL.user_agent, meta.request_id)
        for later in judged:
            audit.record(s, now_us, audit.SYSTEM, system_meta, later)
    return seq


def _judge(s: Session, settings: Settings, now_us: int, actor: audit.Actor, ev: audit.Event) -> list[audit.Event]:
    """The events to append after ``ev`` (already appended): alerts raised, grants suspended. Nothing for anyone but
    a known user's retrievals and refusals (no query at all); for those, the common case is one statement answering
    one row (:data:`_FOOTAGE_SQL`, :data:`_DENIAL_SQL`)."""
    uid = actor.id
    if uid is None:
        return []
    footage = ev.action in FOOTAGE_ACTIONS and ev.outcome in RETRIEVED
    if not footage and ev.outcome != "denied":
        return []
    if footage:
        opened, measure = _footage_read(s, uid, now_us, ev)
    else:
        opened, denials = _denial_read(s, uid, now_us)
    out: list[audit.Event] = []
    holding = _holder(opened, settings)
    if holding is not None:
        # A grant issued or resumed while an alert holds the user's grants goes the same way at its first use.
        _suspend_into(s, uid, holding, now_us, out, "active again while the alert is open")
    if footage:
        findings = _footage_findings(s, settings, uid, now_us, ev, set(opened), measure)
    else:
        findings = [] if "repeated_denials" in opened else _denial_findings(s, settings, uid, now_us, denials)
    for f in findings:
        if f.rule in opened:
            continue
        if f.rule == "off_hours":
            if _off_hours_alerted(s, uid, f.since_us):
                continue
        else:
            base = _baseline(s, uid, f.rule, now_us - f.span_us)
            if base is not None and not f.holds_after(base):
                continue
        a = _raise(s, settings, uid, f, now_us, out)
        opened[f.rule] = (a.id, a.rule)
    return out


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


# The common case is one statement answering one row: which rules have an open alert of the user (a bit per rule
# of RULES), then the measures of their retrievals of the last hour, this one included (``seq > :after``: only
# those after a review): the plain sum of the windows (an upper bound of the hours), the number of cameras, and how
# often this camera occurs. Only when the plain sum is above the limit is the exact measure taken
# (:data:`_UNION_SQL`), and only when an alert is open are the alerts' ids read.
_OPEN_BITS = (
    "(SELECT coalesce(sum(DISTINCT CASE rule "  # noqa: S608
    + " ".join(f"WHEN '{rule}' THEN {1 << k}" for k, rule in enumerate(RULES))
    + " ELSE 0 END), 0) FROM alerts WHERE user_id = :uid AND state = 'open')"
)
_RETRIEVALS = (
    "actor_id = :uid AND at_us > :since AND at_us <= :until AND seq > :after AND camera_id IS NOT NULL "
    f"AND action IN ({_quoted(FOOTAGE_ACTIONS)}) AND outcome IN ({_quoted(RETRIEVED)})"
)
# The f-strings below put only this module's constants into the SQL; every value is a bound parameter.
_HOUR_ROWS = f"""SELECT camera_id AS c, coalesce(window_start_us, 0) AS s,
        CASE WHEN window_end_us > window_start_us THEN window_end_us ELSE coalesce(window_start_us, 0) END AS e
    FROM audit_events WHERE {_RETRIEVALS}"""  # noqa: S608
_FOOTAGE_SQL = text(
    f"""SELECT {_OPEN_BITS},
    coalesce(sum(CASE WHEN window_end_us > window_start_us THEN window_end_us - window_start_us ELSE 0 END), 0),
    count(DISTINCT camera_id), coalesce(sum(CASE WHEN camera_id = :cam THEN 1 ELSE 0 END), 0)
FROM audit_events WHERE {_RETRIEVALS}"""  # noqa: S608
)
# Hours exactly: per camera the length of the union of the windows (a window watched twice counts once), in one
# window-function pass: windows in order of start, each adds what reaches past the furthest end before it.
_UNION_SQL = text(
    f"""WITH r AS ({_HOUR_ROWS}), w AS (
    SELECT c, s, e, max(e) OVER (PARTITION BY c ORDER BY s, e ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach
    FROM r
)
SELECT coalesce(sum(CASE WHEN e > (CASE WHEN reach > s THEN reach ELSE s END)
    THEN e - (CASE WHEN reach > s THEN reach ELSE s END) ELSE 0 END), 0) FROM w"""  # noqa: S608
)
_DENIAL_SQL = text(
    f"SELECT {_OPEN_BITS}, (SELECT count(*) FROM audit_events WHERE actor_id = :uid AND at_us > :since "  # noqa: S608
    "AND at_us <= :until AND seq > :after AND outcome = 'denied')"
)
_OPEN_SQL = text("SELECT rule, min(id) FROM alerts WHERE user_id = :uid AND state = 'open' GROUP BY rule")
# On PostgreSQL the times are written into the text (integers this module computes): with bound parameters it soon
# plans the statement once for any range, as a bitmap scan that reads all 30 days of the user's events before it can
# stop (1.5-2.3 ms); with the values it takes a plain index scan, newest first, that stops at the first match.
_USUAL_PROBE = (
    "SELECT seq FROM audit_events WHERE actor_id = :uid AND at_us > {lo} AND at_us <= {hi} "  # noqa: S608
    f"AND camera_id = :cam AND action IN ({_quoted(FOOTAGE_ACTIONS)}) AND outcome IN ({_quoted(RETRIEVED)}) "
    "ORDER BY at_us DESC LIMIT 1"
)
_USUAL_PROBE_BOUND = text(_USUAL_PROBE.format(lo=":lo", hi=":hi"))  # SQLite plans each statement with its values
_HOUR_CAMERAS = text(f"SELECT DISTINCT camera_id FROM audit_events WHERE {_RETRIEVALS}")  # noqa: S608


@dataclass(frozen=True)
class _Measure:
    plain_hours: float
    """The windows' lengths summed: at least the hours of footage (overlaps counted as often as they occur)."""
    cameras: int
    seen: int
    """Retrievals of this event's camera in the hour, this one included."""


def _footage_params(uid: int, now_us: int, ev: audit.Event, after: int) -> dict[str, Any]:
    return {"uid": uid, "since": now_us - HOUR_US, "until": now_us, "after": after, "cam": ev.camera_id}


def _opened(s: Session, uid: int, bits: object) -> dict[str, tuple[int, str]]:
    """The user's open alerts (the oldest per rule), read only when ``bits`` says there are some."""
    if not bits:
        return {}
    rows = s.connection().execute(_OPEN_SQL, {"uid": uid}).all()
    return {str(rule): (int(alert_id), str(rule)) for rule, alert_id in rows}


def _footage_read(
    s: Session, uid: int, now_us: int, ev: audit.Event, after: int = -1
) -> tuple[dict[str, tuple[int, str]], _Measure]:
    bits, plain, cams, seen = s.connection().execute(_FOOTAGE_SQL, _footage_params(uid, now_us, ev, after)).one()
    return _opened(s, uid, bits), _Measure(int(plain or 0) / HOUR_US, int(cams or 0), int(seen or 0))


def footage_hours(s: Session, uid: int, now_us: int, ev: audit.Event, after: int = -1) -> float:
    """Hours of footage the user retrieved in the hour to ``now_us`` (``ev`` is stored): per camera the union."""
    return int(s.connection().execute(_UNION_SQL, _footage_params(uid, now_us, ev, after)).scalar() or 0) / HOUR_US


def _denial_read(s: Session, uid: int, now_us: int, after: int = -1) -> tuple[dict[str, tuple[int, str]], int]:
    """Open alerts, and the user's refusals of the last hour, this one included."""
    params = {"uid": uid, "since": now_us - HOUR_US, "until": now_us, "after": after}
    bits, n = s.connection().execute(_DENIAL_SQL, params).one()
    return _opened(s, uid, bits), int(n or 0)


def _open_alerts(s: Session, user_id: int) -> dict[str, tuple[int, str]]:
    return _opened(s, user_id, True)


def _holder(opened: dict[str, tuple[int, str]], settings: Settings) -> tuple[int, str] | None:
    """The oldest open alert whose rule suspends: the one that holds the user's suspended grants."""
    held = [v for rule, v in opened.items() if rule in settings.alert_suspend_rules]
    return min(held) if held else None


# --- the rules -------------------------------------------------------------------------------------------------
@dataclass
class Finding:
    rule: str
    detail: str
    span_us: int
    """How far back the rule looks (an hour, a day): a review newer than that resets what counts."""
    recheck: Callable[[int], bool] | None = None
    """Does the rule still fire counting only the events after the given audit seq (a review's)?"""
    since_us: int = 0
    """off_hours: when the off-hours period of this event began."""

    def holds_after(self, baseline_seq: int) -> bool:
        return self.recheck(baseline_seq) if self.recheck is not None else True


def _hms(hours: float) -> str:
    s = round(hours * 3600)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _footage_findings(
    s: Session, settings: Settings, uid: int, now_us: int, ev: audit.Event, skip: set[str], m: _Measure
) -> list[Finding]:
    """What the retrieval ``ev`` trips, given the measures ``m`` of the user's hour; the rules in ``skip`` (an
    alert of theirs is open) cost no query."""
    until = iso(now_us)
    out: list[Finding] = []
    limit_h = settings.alert_footage_hours_per_hour
    hours = footage_hours(s, uid, now_us, ev) if m.plain_hours > limit_h else 0.0
    if hours > limit_h:
        out.append(
            Finding(
                "footage_volume",
                f"{_hms(hours)} (h:mm:ss) of footage (per camera, the union of the windows retrieved) in the hour "
                f"to {until}; limit {_hms(limit_h)}",
                HOUR_US,
                lambda base: footage_hours(s, uid, now_us, ev, base) > limit_h,
            )
        )
    limit_c = settings.alert_cameras_per_hour
    if m.cameras > limit_c:
        out.append(
            Finding(
                "camera_spread",
                f"{m.cameras} cameras retrieved in the hour to {until}; limit {limit_c}",
                HOUR_US,
                lambda base: _footage_read(s, uid, now_us, ev, base)[1].cameras > limit_c,
            )
        )
    off = None if "off_hours" in skip else _off_hours(settings, now_us)
    if off is not None:
        local, since = off
        out.append(
            Finding(
                "off_hours",
                f"{ev.action} of camera {ev.camera_id} at {local} site time ({settings.site_timezone}); "
                f"off hours {settings.alert_off_hours}",
                HOUR_US,
                since_us=since,
            )
        )
    # The number of unusual cameras can only have grown when this is the camera's first retrieval of the hour and
    # the hour holds more cameras than the limit: otherwise no query at all.
    limit_u = settings.alert_unusual_cameras_per_hour
    if "unusual_cameras" not in skip and ev.camera_id and m.seen == 1 and m.cameras > limit_u:
        unusual = _unusual_finding(s, settings, uid, now_us, ev.camera_id)
        if unusual is not None:
            out.append(unusual)
    if "many_destinations" not in skip and ev.action == DOWNLOAD and ev.destination:
        found = _destinations_finding(s, settings, uid, now_us, ev.destination)
        if found is not None:
            out.append(found)
    return out


def _usual_where(settings: Settings, uid: int, now_us: int) -> tuple[Any, ...]:
    """The user's retrievals in the ``alert_usual_days`` days before the last hour."""
    to = now_us - HOUR_US
    return (
        AuditEvent.actor_id == uid,
        AuditEvent.at_us > to - settings.alert_usual_days * DAY_US,
        AuditEvent.at_us <= to,
        AuditEvent.action.in_(FOOTAGE_ACTIONS),
        AuditEvent.outcome.in_(RETRIEVED),
    )


def _is_usual(s: Session, settings: Settings, uid: int, now_us: int, camera_id: str) -> bool:
    """Did the user retrieve this camera in the ``alert_usual_days`` before the last hour? (Stops at the first.)"""
    hi = int(now_us - HOUR_US)
    lo = int(hi - settings.alert_usual_days * DAY_US)
    conn = s.connection()
    if conn.dialect.name == "postgresql":
        probe = text(_USUAL_PROBE.format(lo=lo, hi=hi))
        return conn.execute(probe, {"uid": uid, "cam": camera_id}).first() is not None
    return conn.execute(_USUAL_PROBE_BOUND, {"uid": uid, "cam": camera_id, "lo": lo, "hi": hi}).first() is not None


def _usual_cameras(s: Session, settings: Settings, uid: int, now_us: int, cameras: Sequence[str]) -> set[str]:
    """Which of ``cameras`` the user retrieved in the ``alert_usual_days`` days before the last hour."""
    q = select(AuditEvent.camera_id).where(*_usual_where(settings, uid, now_us), AuditEvent.camera_id.in_(cameras))
    return {str(r[0]) for r in s.execute(q.distinct())}


def _unusual_finding(s: Session, settings: Settings, uid: int, now_us: int, camera_id: str) -> Finding | None:
    if _is_usual(s, settings, uid, now_us, camera_id):
        return None
    limit = settings.alert_unusual_cameras_per_hour

    def unusual(base: int) -> list[str]:
        params = {"uid": uid, "since": now_us - HOUR_US, "until": now_us, "after": base}
        cams = sorted({str(c) for (c,) in s.connection().execute(_HOUR_CAMERAS, params)} | {camera_id})
        if len(cams) <= limit:
            return []
        usual = _usual_cameras(s, settings, uid, now_us, cams)
        return [c for c in cams if c not in usual]

    found = unusual(-1)
    if len(found) <= limit:
        return None
    return Finding(
        "unusual_cameras",
        f"{len(found)} cameras retrieved in the hour to {iso(now_us)} that the user had not retrieved in the "
        f"{settings.alert_usual_days} days before: {', '.join(found[:20])}{' …' if len(found) > 20 else ''}; "
        f"limit {limit}",
        HOUR_US,
        lambda base: len(unusual(base)) > limit,
    )


def _norm_destination(text: str) -> str:
    return " ".join(text.split()).lower()[:200]


def _destinations_finding(s: Session, settings: Settings, uid: int, now_us: int, destination: str) -> Finding | None:
    rows = s.execute(
        select(AuditEvent.seq, AuditEvent.destination).where(
            AuditEvent.actor_id == uid,
            AuditEvent.at_us > now_us - DAY_US,
            AuditEvent.at_us <= now_us,
            AuditEvent.action == DOWNLOAD,
            AuditEvent.outcome.in_(RETRIEVED),
            AuditEvent.destination.is_not(None),
        )
    ).all()
    seen = [(float(seq), _norm_destination(str(d))) for seq, d in rows] + [
        (float("inf"), _norm_destination(destination))
    ]
    limit = settings.alert_destinations_per_day

    def distinct(base: float) -> list[str]:
        return sorted({d for seq, d in seen if seq > base})

    names = distinct(-1.0)
    if len(names) <= limit:
        return None
    shown = ", ".join(repr(n[:60]) for n in names[:10])
    return Finding(
        "many_destinations",
        f"{len(names)} download destinations in the 24 h to {iso(now_us)}: {shown}; limit {limit}",
        DAY_US,
        lambda base: len(distinct(base)) > limit,
    )


def _denial_findings(s: Session, settings: Settings, uid: int, now_us: int, n: int) -> list[Finding]:
    """``n``: the user's refusals of the last hour, this one included."""
    limit = settings.alert_denials_per_hour
    if n <= limit:
        return []
    return [
        Finding(
            "repeated_denials",
            f"{n} refused requests in the hour to {iso(now_us)}; limit {limit}",
            HOUR_US,
            lambda base: _denial_read(s, uid, now_us, base)[1] > limit,
        )
    ]


@functools.lru_cache(maxsize=16)
def _zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def _off_hours(settings: Settings, now_us: int) -> tuple[str, int] | None:
    """(local time text, start of the off-hours period it is in, UTC µs), or None in working hours."""
    hours = parse_off_hours(settings.alert_off_hours) if settings.alert_off_hours else None
    if hours is None:
        return None
    start, end = hours
    tz = _zone(settings.site_timezone)
    local = dt.datetime.fromtimestamp(now_us / 1_000_000, tz)
    h = local.hour
    if start < end:
        if not start <= h < end:
            return None
        day = local.date()
    else:
        if end <= h < start:
            return None
        day = local.date() if h >= start else local.date() - dt.timedelta(days=1)
    since = dt.datetime(day.year, day.month, day.day, start, tzinfo=tz)
    return local.strftime("%H:%M"), int(since.timestamp()) * 1_000_000


def _off_hours_alerted(s: Session, uid: int, since_us: int) -> bool:
    """One off_hours alert per user per off-hours period (a night), whatever its review said."""
    return (
        s.scalar(
            select(Alert.id)
            .where(Alert.user_id == uid, Alert.rule == "off_hours", Alert.raised_us >= since_us)
            .limit(1)
        )
        is not None
    )


def _baseline(s: Session, uid: int, rule: str, window_from_us: int) -> int | None:
    """The audit seq of the newest review of this (user, rule) inside the rule's window, or None: a reviewed alert
    settles what came before it, and only events after the review count again."""
    row = s.execute(
        select(Alert.id, Alert.reviewed_by, Alert.reviewed_us)
        .where(
            Alert.user_id == uid,
            Alert.rule == rule,
            Alert.state.in_(("restored", "upheld")),
            Alert.reviewed_us >= window_from_us,
        )
        .order_by(Alert.reviewed_us.desc(), Alert.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    alert_id, reviewer, reviewed_us = row
    seq = s.scalar(
        select(func.max(AuditEvent.seq)).where(
            AuditEvent.actor_id == reviewer,
            AuditEvent.at_us == reviewed_us,
            AuditEvent.action == "alert.review",
            AuditEvent.object_id == f"alert:{alert_id}",
        )
    )
    if seq is None:  # the review's event is not where it should be (a row edited by hand): count from its time
        seq = s.scalar(select(func.max(AuditEvent.seq)).where(AuditEvent.at_us <= reviewed_us))
    return int(seq or 0)


# --- raising and suspending --------------------------------------------------------------------------------------
def _raise(s: Session, settings: Settings, uid: int, f: Finding, now_us: int, out: list[audit.Event]) -> Alert:
    a = Alert(rule=f.rule, user_id=uid, state="open", raised_us=now_us, detail=f.detail, suspended_grants="")
    s.add(a)
    s.flush()
    suspends = f.rule in settings.alert_suspend_rules
    out.append(
        audit.Event(
            "alert.raise",
            "ok",
            object_id=f"alert:{a.id}",
            reason=f"user {uid}: {f.rule}: {f.detail}" + ("; the user's grants are suspended" if suspends else ""),
        )
    )
    if suspends:
        _suspend_into(s, uid, (a.id, a.rule), now_us, out, "raised")
    return a


def _reason(alert_id: int, rule: str) -> str:
    return f"alert:{alert_id} {rule}"


def _ids(text: str | None) -> list[int]:
    return [int(x) for x in (text or "").split(",") if x.strip().isdigit()]


def _take_grants(s: Session, *where: Any) -> list[int]:
    """Row-lock the grants matching ``where`` and return their ids, while this transaction holds the audit head.

    A person changing a grant by hand locks the grant first and the audit head second; waiting here for such a
    grant could deadlock. So on PostgreSQL a grant locked by another transaction is waited for at most 100 ms (a
    stream start holding it commits sooner), then left out (``SKIP LOCKED``): whoever holds it is changing it, and
    an open alert that suspends sweeps any grant of the user still active at their next request. SQLite has one
    writer at a time: this transaction already excludes every other."""
    q = select(Grant.id).where(*where).order_by(Grant.id)
    if s.get_bind().dialect.name != "postgresql":
        return [int(x) for x in s.scalars(q)]
    try:
        with s.begin_nested():
            s.execute(text("SET LOCAL lock_timeout = '100ms'"))
            ids = [int(x) for x in s.scalars(q.with_for_update())]
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) != "55P03":  # lock_not_available
            raise
        ids = [int(x) for x in s.scalars(q.with_for_update(skip_locked=True))]
    else:
        s.execute(text("SET LOCAL lock_timeout TO DEFAULT"))
    return ids


def _set_grants(s: Session, ids: list[int], **values: Any) -> None:
    if ids:
        s.execute(
            update(Grant).where(Grant.id.in_(ids)).values(**values).execution_options(synchronize_session="fetch")
        )


def _suspend_into(
    s: Session, uid: int, holder: tuple[int, str], now_us: int, out: list[audit.Event], why: str
) -> list[int]:
    """Suspend every active, unexpired grant of the user into the alert."""
    alert_id, rule = holder
    ids = _take_grants(s, Grant.user_id == uid, Grant.state == "active", Grant.valid_until_us > now_us)
    if not ids:
        return []
    _set_grants(s, ids, state="suspended", state_reason=_reason(alert_id, rule), updated_us=now_us)
    _add_grants(s, alert_id, ids)
    for gid in ids:
        out.append(
            audit.Event("grant.suspend", "ok", object_id=f"grant:{gid}", reason=f"alert {alert_id} ({rule}) {why}")
        )
    return ids


def _add_grants(s: Session, alert_id: int, ids: list[int]) -> None:
    # Read-modify-write of the list is safe: every change of an alert happens while its transaction holds the audit
    # head (raising and sweeping come after the event's append; a review appends first).
    held = _ids(s.scalar(select(Alert.suspended_grants).where(Alert.id == alert_id)))
    merged = ",".join(str(g) for g in sorted(set(held) | set(ids)))
    s.execute(
        update(Alert)
        .where(Alert.id == alert_id)
        .values(suspended_grants=merged)
        .execution_options(synchronize_session="fetch")
    )


# --- reading -------------------------------------------------------------------------------------------------------
def _require_reader(p: Principal) -> None:
    if not any(p.can(c) for c in READ_CAPABILITIES):
        raise NvrError(Kind.PERMISSION_DENIED, "role_forbidden", "only approvers, auditors and admins see alerts")


def _check_id(alert_id: int) -> int:
    if not 0 < alert_id < MAX_ID:
        raise NvrError(Kind.NOT_FOUND, "alert_not_found", f"no alert {alert_id}")
    return alert_id


def list_alerts(
    s: Session,
    who: Principal | None,
    actor: audit.Actor,
    meta: audit.RequestMeta,
    now_us: int,
    *,
    state: str | None = None,
    user_id: int | None = None,
    rule: str | None = None,
    limit: int = 500,
) -> list[Alert]:
    """Alerts, newest first, and an ``alert.list`` event. ``who`` None is the local command line (shell access to
    the server); a person must be an approver, auditor or admin."""
    if who is not None:
        _require_reader(who)
    if state is not None and state not in STATES:
        raise NvrError(Kind.INVALID_ARGUMENT, "alert_state_invalid", f"state must be one of {', '.join(STATES)}")
    if rule is not None and rule not in RULES:
        raise NvrError(Kind.INVALID_ARGUMENT, "alert_rule_invalid", f"rule must be one of {', '.join(RULES)}")
    q = select(Alert).order_by(Alert.id.desc()).limit(max(1, min(limit, 1000)))
    if state is not None:
        q = q.where(Alert.state == state)
    if user_id is not None:
        q = q.where(Alert.user_id == user_id)
    if rule is not None:
        q = q.where(Alert.rule == rule)
    found = list(s.scalars(q))
    filters = ", ".join(f"{k}={v}" for k, v in (("state", state), ("user", user_id), ("rule", rule)) if v is not None)
    audit.record(
        s,
        now_us,
        actor,
        meta,
        audit.Event("alert.list", "allowed", reason=f"{len(found)} alert(s)" + (f"; {filters}" if filters else "")),
    )
    return found


def get_alert(
    s: Session, who: Principal | None, actor: audit.Actor, meta: audit.RequestMeta, alert_id: int, now_us: int
) -> Alert:
    """One alert and an ``alert.read`` event (the same readers as :func:`list_alerts`)."""
    if who is not None:
        _require_reader(who)
    a = s.get(Alert, _check_id(alert_id))
    if a is None:
        raise NvrError(Kind.NOT_FOUND, "alert_not_found", f"no alert {alert_id}")
    audit.record(s, now_us, actor, meta, audit.Event("alert.read", "allowed", object_id=f"alert:{a.id}"))
    return a


def open_counts(s: Session) -> dict[str, int]:
    """Open alerts per rule, every rule named (for /health and /metrics)."""
    counts = dict.fromkeys(RULES, 0)
    for rule, n in s.execute(select(Alert.rule, func.count()).where(Alert.state == "open").group_by(Alert.rule)):
        counts[str(rule)] = counts.get(str(rule), 0) + int(n)
    return counts


def _person(s: Session, user_id: int | None) -> dict[str, Any] | None:
    if user_id is None:
        return None
    u = s.get(User, user_id)
    if u is None:
        return {"id": user_id, "username": None, "full_name": None, "unit": None}
    return {"id": u.id, "username": u.username, "full_name": u.full_name, "unit": u.unit}


def view(s: Session, a: Alert, settings: Settings) -> dict[str, Any]:
    return {
        "id": a.id,
        "rule": a.rule,
        "state": a.state,
        "user": _person(s, a.user_id),
        "raised": iso(a.raised_us),
        "detail": a.detail,
        "suspends": a.rule in settings.alert_suspend_rules,
        "suspended_grants": _ids(a.suspended_grants),
        "reviewed_by": _person(s, a.reviewed_by),
        "reviewed": iso(a.reviewed_us),
        "review_note": a.review_note,
    }


# --- the review ------------------------------------------------------------------------------------------------------
@dataclass
class Review:
    alert: Alert
    resumed: list[int]
    """Grants this review made active again."""
    still_suspended: list[int]
    """Grants the alert held that stay suspended: upheld, or handed to another open alert of the user."""
    held_by: int | None
    """The other open alert that now holds them (restore while another suspending alert is open)."""


def review(
    s: Session,
    settings: Settings,
    p: Principal,
    meta: audit.RequestMeta,
    alert_id: int,
    decision: str,
    note: str,
    now_us: int,
) -> Review:
    """An approver, never the alert's own user, decides: ``restore`` (the grants this alert suspended and still
    holds, not expired or revoked, become active again; while another alert of the user that suspends is open,
    they pass to it instead) or ``uphold`` (they stay suspended). Exactly one of parallel reviews wins (409
    ``alert_reviewed`` for the others). Writes ``alert.review`` and one event per grant it resumes or hands on."""
    if not p.can(REVIEW_CAPABILITY):
        raise NvrError(Kind.PERMISSION_DENIED, "role_forbidden", "only an approver may review an alert")
    if decision not in DECISIONS:
        raise NvrError(Kind.INVALID_ARGUMENT, "alert_decision_invalid", "decision must be 'restore' or 'uphold'")
    note = note.strip()
    if not note or len(note) > 2000:
        raise NvrError(Kind.INVALID_ARGUMENT, "note_invalid", "a review needs a note of 1 to 2000 characters")
    uid = s.scalar(select(Alert.user_id).where(Alert.id == _check_id(alert_id)))
    if uid is None:
        raise NvrError(Kind.NOT_FOUND, "alert_not_found", f"no alert {alert_id}")
    if uid == p.user_id:
        raise NvrError(Kind.PERMISSION_DENIED, "alert_self_review", "nobody may review an alert about themselves")
    # The audit head first, as every judgement holds it: reviews and judgements of the user take turns.
    audit.record(
        s,
        now_us,
        p.actor,
        meta,
        audit.Event("alert.review", "ok", object_id=f"alert:{alert_id}", reason=f"{decision}: {note}"),
    )
    won = s.execute(
        update(Alert)
        .where(Alert.id == alert_id, Alert.state == "open")
        .values(state=DECISIONS[decision], reviewed_by=p.user_id, reviewed_us=now_us, review_note=note)
        .returning(Alert.rule, Alert.suspended_grants)
        .execution_options(synchronize_session="fetch")
    ).first()
    if won is None:
        raise NvrError(Kind.CONFLICT, "alert_reviewed", f"alert {alert_id} has been reviewed already")
    rule, held = str(won[0]), _ids(won[1])
    mine = (Grant.id.in_(held), Grant.state == "suspended", Grant.state_reason == _reason(alert_id, rule))
    resumed: list[int] = []
    still: list[int] = []
    holder = None
    later: list[audit.Event] = []
    if decision == "restore" and held:
        holder = _holder(_open_alerts(s, uid), settings)
        if holder is None:
            resumed = _take_grants(s, *mine, Grant.valid_until_us > now_us)
            _set_grants(s, resumed, state="active", state_reason=None, updated_us=now_us)
            for gid in resumed:
                later.append(
                    audit.Event(
                        "grant.resume", "ok", object_id=f"grant:{gid}", reason=f"alert {alert_id} restored: {note}"
                    )
                )
        else:
            still = _take_grants(s, *mine)
            _set_grants(s, still, state_reason=_reason(*holder), updated_us=now_us)
            if still:
                _add_grants(s, holder[0], still)
                later.append(
                    audit.Event(
                        "alert.handover",
                        "ok",
                        object_id=f"alert:{holder[0]}",
                        reason=f"grants {','.join(map(str, still))} stay suspended: alert {holder[0]} "
                        f"({holder[1]}) is open; alert {alert_id} was restored",
                    )
                )
    elif decision == "uphold":
        still = [int(x) for x in s.scalars(select(Grant.id).where(*mine).order_by(Grant.id))]
    for ev in later:
        audit.record(s, now_us, p.actor, meta, ev)
    a = s.get(Alert, alert_id)
    assert a is not None
    s.refresh(a)
    return Review(a, resumed, still, holder[0] if holder else None)
