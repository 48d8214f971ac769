"""Evidence holds: keep a case's footage unaltered, past any retention, until two people release it.

A hold names a case, cameras and a window (its end may be open: "until released", which also covers footage still
being recorded and footage recorded later). It protects every segment of its cameras overlapping the window, by the
same rule the sweeper applies (:func:`retention.protect.held`), and its files are made read-only on disk. Release
takes two different people with the release permission: one asks, another confirms. Every step is one audit event
in the same transaction as the change.

This layer cannot see roles or grants (they live in ``api``): callers pass who acts as plain values, whether that
person may release, and (for placing) a check of which cameras the person may see.

Races: placing, sealing a new segment and restoring write access each lock the cameras' rows first (in id order),
and the release steps lock the hold's row, so a hold committed at the same moment as a segment is registered still
seals it, and two confirmations cannot both succeed. See docs/retention/holds.md.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from integrity.audit_log import Actor, Event, RequestMeta, record
from nvr import registry
from nvr.clock import iso
from nvr.errors import Kind, NvrError
from nvr.models import Camera, EvidenceHold, HoldCamera, Segment, User, Volume
from retention.protect import PROTECTING_HOLD_STATES, held, hold_protects, protecting_hold_exists

log = logging.getLogger(__name__)

HOLD_STATES = ("active", "release_requested", "released")
MAX_CAMERAS = 1000
MAX_TEXT = 2000
WRITE_BITS = 0o222


@dataclass(frozen=True)
class Person:
    """Who acts, as plain values. ``may_release``: the person holds the release permission (``holds.release``)."""

    user_id: int | None
    name: str
    may_release: bool
    actor: Actor
    meta: RequestMeta


@dataclass(frozen=True)
class HoldSpec:
    """A hold as asked for; :func:`validate` checks and normalises it."""

    case_ref: str | None
    title: str | None
    reason: str | None
    cameras: list[str] | None
    start_us: int | None
    end_us: int | None = None


@dataclass(frozen=True)
class Covered:
    """What a hold covers on one camera, in whole segments (``segments`` 0: nothing recorded there yet)."""

    camera_id: str
    first_seq: int | None
    last_seq: int | None
    start_us: int | None
    end_us: int | None
    segments: int
    bytes: int

    def view(self) -> dict[str, Any]:
        return {
            "camera_id": self.camera_id,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "start": iso(self.start_us),
            "end": iso(self.end_us),
            "segments": self.segments,
            "bytes": self.bytes,
        }


@dataclass(frozen=True)
class FileProblem:
    """A covered segment whose file could not be sealed (or unsealed): reported, never fatal."""

    camera_id: str
    seq: int
    problem: str


@dataclass
class Placed:
    hold: EvidenceHold
    covered: list[Covered]
    problems: list[FileProblem]


# --- validation ---------------------------------------------------------------------------------------------
def _fail(kind: Kind, code: str, message: str) -> NvrError:
    return NvrError(kind, code, message)


def _text(value: str | None, code: str, what: str, limit: int) -> str:
    value = (value or "").strip()
    if not value or len(value) > limit:
        raise _fail(Kind.INVALID_ARGUMENT, code, f"a hold needs a {what} of 1 to {limit} characters")
    return value


def validate(spec: HoldSpec) -> HoldSpec:
    """Refuse a hold without a case reference, title, reason, cameras or a valid window; normalise the rest."""
    case_ref = _text(spec.case_ref, "hold_case_ref_required", "case reference", 200)
    title = _text(spec.title, "hold_title_required", "title", 200)
    reason = _text(spec.reason, "hold_reason_required", "reason", MAX_TEXT)
    cameras = sorted(set(spec.cameras or []))
    if not cameras:
        raise _fail(Kind.INVALID_ARGUMENT, "hold_cameras_required", "a hold names at least one camera")
    if len(cameras) > MAX_CAMERAS:
        raise _fail(Kind.INVALID_ARGUMENT, "hold_cameras_too_many", f"a hold names at most {MAX_CAMERAS} cameras")
    for c in cameras:
        registry.validate_id(c)
    if spec.start_us is None:
        raise _fail(Kind.INVALID_ARGUMENT, "window_invalid", "a hold needs a start time (its end may be left open)")
    if spec.end_us is not None and spec.end_us <= spec.start_us:
        raise _fail(Kind.INVALID_ARGUMENT, "window_invalid", "end must be after start")
    return HoldSpec(case_ref, title, reason, cameras, spec.start_us, spec.end_us)


# --- locks --------------------------------------------------------------------------------------------------
def _sqlite(s: Session) -> bool:
    return s.get_bind().dialect.name == "sqlite"


def _lock_cameras(s: Session, camera_ids: Iterable[str]) -> None:
    """Serialise everything that seals or unseals files of these cameras (placing, new segments, restoring).

    PostgreSQL: row locks taken in id order (no deadlock between two holds naming the same cameras); ``NO KEY
    UPDATE`` so rows that merely reference the camera (segments, read pins, gaps) are not held up. SQLite has no
    row locks, and its driver opens a transaction only at the first write: a no-op write takes the database's
    write lock, so what is read next cannot change before commit.
    """
    ids = sorted(set(camera_ids))
    if _sqlite(s):
        s.execute(
            update(Camera).where(Camera.id.in_(ids)).values(updated_us=Camera.updated_us),
            execution_options={"synchronize_session": False},
        )
    else:
        s.execute(select(Camera.id).where(Camera.id.in_(ids)).order_by(Camera.id).with_for_update(key_share=True))


def _locked_hold(s: Session, hold_id: int) -> EvidenceHold:
    """The hold's row, locked for the rest of the transaction (two confirmations take turns, the second sees the
    first's outcome)."""
    if _sqlite(s):
        s.execute(
            update(EvidenceHold).where(EvidenceHold.id == hold_id).values(state=EvidenceHold.state),
            execution_options={"synchronize_session": False},
        )
    h = s.scalar(
        select(EvidenceHold)
        .where(EvidenceHold.id == hold_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if h is None:
        raise _fail(Kind.NOT_FOUND, "hold_not_found", f"no hold {hold_id}")
    return h


# --- what a hold covers -------------------------------------------------------------------------------------
def _overlaps(start_us: int, end_us: int | None) -> ColumnElement[bool]:
    """Segments overlapping [start_us, end_us); ``end_us`` None reaches into the future. The same comparison as
    :func:`retention.protect.held` (hold start < segment end, hold end open or > segment start)."""
    cond = Segment.end_us > start_us
    return cond if end_us is None else and_(cond, Segment.start_us < end_us)


def _window_end(h: EvidenceHold) -> int | None:
    """A released open-ended hold covered footage up to its release, not what came after."""
    return h.released_us if h.end_us is None and h.state == "released" else h.end_us


def coverage(s: Session, h: EvidenceHold, cameras: list[str]) -> list[Covered]:
    """Per camera, the whole segments the hold's window overlaps (for an open end: so far). Rows on the sweeper's
    garbage list are being deleted and are not counted."""
    rows = s.execute(
        select(
            Segment.camera_id,
            func.min(Segment.seq),
            func.max(Segment.seq),
            func.min(Segment.start_us),
            func.max(Segment.end_us),
            func.count(),
            func.coalesce(func.sum(Segment.bytes), 0),
        )
        .where(
            Segment.camera_id.in_(cameras),
            Segment.sweep_batch_id.is_(None),
            _overlaps(h.start_us, _window_end(h)),
        )
        .group_by(Segment.camera_id)
    ).all()
    found = {r[0]: r for r in rows}
    out = []
    for c in cameras:
        r = found.get(c)
        if r is None:
            out.append(Covered(c, None, None, None, None, 0, 0))
        else:
            out.append(Covered(c, int(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]), int(r[6])))
    return out


def _files(cameras: list[str], cond: ColumnElement[bool]) -> Select[str, int, str, str]:
    return (
        select(Segment.camera_id, Segment.seq, Volume.path, Segment.rel_path)
        .join(Volume, Volume.id == Segment.volume_id)
        .where(Segment.camera_id.in_(cameras), Segment.sweep_batch_id.is_(None), cond)
        .order_by(Segment.camera_id, Segment.seq)
    )


# --- read-only files ----------------------------------------------------------------------------------------
def _chmod(path: Path, seal: bool) -> str | None:
    """Drop every write bit (seal) or give the owner's back; None when done, else what went wrong."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        new = mode & ~WRITE_BITS if seal else mode | stat.S_IWUSR
        if new != mode:
            os.chmod(path, new)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"chmod_failed: {exc.__class__.__name__}"
    return None


def _apply(s: Session, query: Select[str, int, str, str], seal: bool) -> tuple[int, list[FileProblem]]:
    done, problems = 0, []
    for camera_id, seq, vol_path, rel_path in s.execute(query.execution_options(yield_per=2000)):
        problem = _chmod(Path(vol_path) / rel_path, seal)
        if problem is None:
            done += 1
        else:
            log.warning("hold: segment %s #%s: %s (%s)", camera_id, seq, problem, Path(vol_path) / rel_path)
            problems.append(FileProblem(camera_id, int(seq), problem))
    return done, problems


def seal_new_segment(session: Session, camera_id: str, start_us: int, end_us: int, path: str | Path) -> bool:
    """Called by the recorder right after registering a segment, in the same transaction: make its file read-only
    when an unreleased hold covers it (an open-ended hold keeps catching new footage). True when sealed."""
    _lock_cameras(session, [camera_id])
    covering = session.scalar(select(protecting_hold_exists(camera_id, start_us, end_us)))
    if not covering:
        return False
    problem = _chmod(Path(path), seal=True)
    if problem is not None:
        log.warning("hold: new segment of %s at %s: %s (%s)", camera_id, iso(start_us), problem, path)
    return problem is None


def restore_write(s: Session, h: EvidenceHold) -> tuple[int, list[FileProblem]]:
    """After a release is committed: give the owner write access back on the hold's files that no other unreleased
    hold covers (:func:`retention.protect.held` decides, so this agrees with the sweeper). Run in a transaction of
    its own after the release: should it never run, files stay read-only, which is the safe side."""
    cameras = cameras_of(s, h.id)
    _lock_cameras(s, cameras)
    return _apply(s, _files(cameras, and_(_overlaps(h.start_us, _window_end(h)), ~held())), seal=False)


# --- placing ------------------------------------------------------------------------------------------------
def place(
    s: Session, spec: HoldSpec, by: Person, now_us: int, may_see: Callable[[Session, str], None] | None = None
) -> Placed:
    """Place a hold: check it, record it, seal its files and write ``hold.place``. ``may_see`` refuses a camera
    the person may not see (the caller knows grants); a camera that does not exist is ``camera_not_found``."""
    spec = validate(spec)
    assert spec.cameras is not None and spec.start_us is not None
    for cid in spec.cameras:
        if may_see is not None:
            may_see(s, cid)
        registry.get(s, cid)
    _lock_cameras(s, spec.cameras)
    h = EvidenceHold(
        case_ref=spec.case_ref,
        title=spec.title,
        reason=spec.reason,
        start_us=spec.start_us,
        end_us=spec.end_us,
        state="active",
        placed_by=by.user_id,
        placed_by_name=by.name,
        placed_us=now_us,
    )
    s.add(h)
    s.flush()
    s.add_all(HoldCamera(hold_id=h.id, camera_id=c) for c in spec.cameras)
    s.flush()
    covered = coverage(s, h, spec.cameras)
    _, problems = _apply(s, _files(spec.cameras, _overlaps(h.start_us, h.end_us)), seal=True)
    summary = "; ".join(
        f"{c.camera_id} seq {c.first_seq}..{c.last_seq} ({c.segments} segments, {c.bytes} bytes)"
        if c.segments
        else f"{c.camera_id} nothing recorded yet"
        for c in covered
    )
    if problems:
        summary += f"; {len(problems)} file(s) could not be made read-only"
    _audit(s, now_us, by, "hold.place", h, spec.cameras, purpose=h.reason, reason=f"{h.title}: covers {summary}")
    return Placed(h, covered, problems)


def _audit(
    s: Session,
    now_us: int,
    by: Person,
    action: str,
    h: EvidenceHold,
    cameras: list[str],
    purpose: str | None,
    reason: str,
) -> None:
    record(
        s,
        now_us,
        by.actor,
        by.meta,
        Event(
            action,
            "ok",
            camera_id=cameras[0] if len(cameras) == 1 else None,
            window_start_us=h.start_us,
            window_end_us=h.end_us,
            object_id=f"hold:{h.id}",
            purpose=purpose,
            case_ref=h.case_ref,
            reason=reason,
        ),
    )


# --- two-person release -------------------------------------------------------------------------------------
def _require_releaser(by: Person) -> None:
    if not by.may_release:
        raise _fail(
            Kind.PERMISSION_DENIED,
            "hold_release_forbidden",
            "only a user with the release permission (an approver) "
            "may ask for, confirm or cancel the release of a hold",
        )


def _refuse_released(h: EvidenceHold) -> None:
    if h.state == "released":
        raise _fail(Kind.FAILED_PRECONDITION, "hold_released", f"hold {h.id} is already released")


def _require_requested(h: EvidenceHold) -> None:
    _refuse_released(h)
    if h.state != "release_requested":
        raise _fail(Kind.FAILED_PRECONDITION, "hold_release_not_requested", f"nobody has asked to release hold {h.id}")


def request_release(s: Session, hold_id: int, by: Person, reason: str | None, now_us: int) -> EvidenceHold:
    """First step: ask for release. The hold keeps protecting until a second person confirms."""
    _require_releaser(by)
    text = _text(reason, "hold_release_reason_required", "release reason", MAX_TEXT)
    h = _locked_hold(s, hold_id)
    _refuse_released(h)
    if h.state == "release_requested":
        raise _fail(
            Kind.FAILED_PRECONDITION,
            "hold_release_pending",
            f"the release of hold {h.id} is already awaiting confirmation",
        )
    h.state = "release_requested"
    h.release_requested_by = by.user_id
    h.release_requested_us = now_us
    h.release_reason = text
    s.flush()
    _audit(s, now_us, by, "hold.release.request", h, cameras_of(s, h.id), purpose=text, reason="release requested")
    return h


def confirm_release(s: Session, hold_id: int, by: Person, comment: str | None, now_us: int) -> EvidenceHold:
    """Second step, by a different person: the hold is released and protects nothing any more. The files get
    their write access back afterwards, in :func:`restore_write`."""
    _require_releaser(by)
    h = _locked_hold(s, hold_id)
    _require_requested(h)
    if h.release_requested_by == by.user_id:
        raise _fail(
            Kind.PERMISSION_DENIED,
            "hold_release_same_user",
            "the release must be confirmed by someone other than the person who asked for it",
        )
    h.state = "released"
    h.released_by = by.user_id
    h.released_us = now_us
    s.flush()
    asked = f"requested by {_name(s, h.release_requested_by)} at {iso(h.release_requested_us)}"
    reason = f"release confirmed; {asked}" + (f"; {comment.strip()}" if comment and comment.strip() else "")
    _audit(s, now_us, by, "hold.release.confirm", h, cameras_of(s, h.id), purpose=h.release_reason, reason=reason)
    return h


def cancel_release(s: Session, hold_id: int, by: Person, comment: str | None, now_us: int) -> EvidenceHold:
    """Withdraw a pending release request (any releaser, the asker included): the hold is active again."""
    _require_releaser(by)
    h = _locked_hold(s, hold_id)
    _require_requested(h)
    asked = f"request by {_name(s, h.release_requested_by)} at {iso(h.release_requested_us)} withdrawn"
    withdrawn_reason = h.release_reason
    h.state = "active"
    h.release_requested_by = None
    h.release_requested_us = None
    h.release_reason = None
    s.flush()
    reason = asked + (f"; {comment.strip()}" if comment and comment.strip() else "")
    _audit(s, now_us, by, "hold.release.cancel", h, cameras_of(s, h.id), purpose=withdrawn_reason, reason=reason)
    return h


# --- reading ------------------------------------------------------------------------------------------------
def get(s: Session, hold_id: int) -> EvidenceHold:
    h = s.get(EvidenceHold, hold_id) if 0 < hold_id < 2**62 else None
    if h is None:
        raise _fail(Kind.NOT_FOUND, "hold_not_found", f"no hold {hold_id}")
    return h


def cameras_of(s: Session, hold_id: int) -> list[str]:
    return list(s.scalars(select(HoldCamera.camera_id).where(HoldCamera.hold_id == hold_id).order_by("camera_id")))


def _visible_to(visible: set[str], user_id: int | None) -> ColumnElement[bool]:
    """Holds naming a camera of ``visible``, or placed by the user (who wrote the hold; :func:`view` still shows them
    only the cameras of ``visible``)."""
    names_visible = exists(
        select(HoldCamera.hold_id).where(HoldCamera.hold_id == EvidenceHold.id, HoldCamera.camera_id.in_(visible))
    )
    return or_(names_visible, EvidenceHold.placed_by == user_id) if user_id is not None else names_visible


def may_see(s: Session, h: EvidenceHold, visible: set[str] | None, user_id: int | None) -> bool:
    """``visible`` None: the person sees every hold."""
    if visible is None or (user_id is not None and h.placed_by == user_id):
        return True
    return bool(set(cameras_of(s, h.id)) & visible)


def list_holds(
    s: Session,
    *,
    camera_id: str | None = None,
    state: str | None = None,
    case_ref: str | None = None,
    visible: set[str] | None = None,
    user_id: int | None = None,
    limit: int = 1000,
) -> list[EvidenceHold]:
    """Holds, oldest first, filtered; ``visible`` (camera ids) limits them to what a person may see."""
    q = select(EvidenceHold).order_by(EvidenceHold.id).limit(limit)
    if state is not None:
        if state not in HOLD_STATES:
            raise _fail(Kind.INVALID_ARGUMENT, "hold_state_invalid", f"state must be one of {', '.join(HOLD_STATES)}")
        q = q.where(EvidenceHold.state == state)
    if camera_id is not None:
        registry.validate_id(camera_id)
        q = q.where(
            exists(
                select(HoldCamera.hold_id).where(
                    HoldCamera.hold_id == EvidenceHold.id, HoldCamera.camera_id == camera_id
                )
            )
        )
    if case_ref is not None:
        q = q.where(EvidenceHold.case_ref == case_ref.strip())
    if visible is not None:
        q = q.where(_visible_to(visible, user_id))
    return list(s.scalars(q))


def _name(s: Session, user_id: int | None) -> str | None:
    if user_id is None:
        return None
    u = s.get(User, user_id)
    return f"{u.full_name} ({u.username})" if u is not None else f"user:{user_id}"


def view(s: Session, h: EvidenceHold, visible: set[str] | None = None) -> dict[str, Any]:
    """A hold as the API and the CLI show it. With ``visible``, only those cameras are named and covered: a camera
    the person may not see now stays out, even of a hold they placed themselves (its coverage of an open-ended hold
    would tell what that camera recorded since)."""
    cameras = cameras_of(s, h.id)
    if visible is not None:
        cameras = [c for c in cameras if c in visible]
    return {
        "id": h.id,
        "case_ref": h.case_ref,
        "title": h.title,
        "reason": h.reason,
        "cameras": cameras,
        "start": iso(h.start_us),
        "end": iso(h.end_us),
        "state": h.state,
        "protecting": h.state in PROTECTING_HOLD_STATES,
        "placed_by": h.placed_by_name,
        "placed_by_id": h.placed_by,
        "placed_at": iso(h.placed_us),
        "release_requested_by": _name(s, h.release_requested_by),
        "release_requested_by_id": h.release_requested_by,
        "release_requested_at": iso(h.release_requested_us),
        "release_reason": h.release_reason,
        "released_by": _name(s, h.released_by),
        "released_by_id": h.released_by,
        "released_at": iso(h.released_us),
        "covered": [c.view() for c in coverage(s, h, cameras)],
    }


def overlapping(s: Session, camera_id: str, start_us: int, end_us: int) -> list[dict[str, Any]]:
    """Unreleased holds on the camera overlapping [start_us, end_us), for the recordings listing."""
    rows = s.scalars(
        select(EvidenceHold)
        .join(HoldCamera, HoldCamera.hold_id == EvidenceHold.id)
        .where(hold_protects(camera_id, start_us, end_us))
        .order_by(EvidenceHold.start_us, EvidenceHold.id)
    )
    return [
        {
            "id": h.id,
            "case_ref": h.case_ref,
            "title": h.title,
            "start": iso(h.start_us),
            "end": iso(h.end_us),
            "state": h.state,
        }
        for h in rows
    ]
