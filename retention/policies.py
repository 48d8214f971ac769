"""Retention policies: how long each camera's footage is kept at least (``min_days``) and at most (``max_days``).

Rules (docs/retention/policies.md):

- ``min_days`` is never below the system floor (``retention_floor_days``, 30 or more): ``policy_below_floor``.
- ``max_days``, when set, is at least ``min_days``: ``policy_max_below_min``.
- Exactly one policy is the default; new cameras get it unless another is named. Every camera has one policy.
- Raising ``min_days`` (or moving a camera to a policy with more) extends ``retain_until`` of the cameras' existing
  segments in the same transaction, in one set-based statement that never lowers anything. Lowering changes no
  stored segment: only segments finished afterwards get the lower value.
- A change that makes the capacity forecast worse for any camera is refused (``capacity_insufficient``) unless the
  caller acknowledges it; the audit event then names what was acknowledged.

Every change writes exactly one audit event, in the same transaction, with the old and new values in its reason;
the reason ends with ``; record sha256 <digest>``, the changed record's digest after the change (integrity.records:
the policy's, or for an assignment the camera's), which ``nvr verify`` compares with the record
(integrity.registry_check). The API and the CLI both change policies through these functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy import update as sql_update
from sqlalchemy.orm import Session

from integrity.audit_log import Actor, Event, RequestMeta, record
from integrity.records import camera_digest, policy_digest
from integrity.registry_check import (
    deleted_note,
    flag_if_edited,
    flag_policy_if_edited,
    previous_default_note,
    with_digest,
)
from nvr import registry
from nvr.clock import iso
from nvr.config import Settings
from nvr.errors import Kind, NvrError
from nvr.models import Camera, RetentionPolicy, Segment
from retention import capacity
from retention.capacity import CapacityWarning
from retention.protect import DAY_US

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
MAX_DAYS = 36_500
MAX_DESCRIPTION = 2000
KEEP: Any = object()
"""``update(max_days=KEEP)``: leave ``max_days`` as it is (``None`` clears it)."""


@dataclass(frozen=True)
class Change:
    """Who changes a policy and when, with the settings the floor and the capacity check come from.
    ``acknowledge``: save even when the capacity forecast gets worse (the warnings go into the audit event)."""

    settings: Settings
    now_us: int
    actor: Actor
    meta: RequestMeta
    acknowledge: bool = False

    @property
    def floor_days(self) -> int:
        return self.settings.retention_floor_days


@dataclass
class Saved:
    policy: RetentionPolicy
    warnings: list[CapacityWarning] = field(default_factory=list)
    extended_segments: int = 0


def _invalid(code: str, message: str) -> NvrError:
    return NvrError(Kind.INVALID_ARGUMENT, code, message)


def validate_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise _invalid(
            "policy_name_invalid",
            "a policy name is 1 to 64 lowercase letters, digits, '-' and '_', starting with a letter or digit",
        )
    return name


def _validate_days(min_days: int, max_days: int | None, floor_days: int, *, check_floor: bool = True) -> None:
    if check_floor and min_days < floor_days:
        raise _invalid(
            "policy_below_floor",
            f"min_days {min_days} is below the system's retention floor of {floor_days} days; "
            f"footage must be kept at least {floor_days} days",
        )
    if min_days > MAX_DAYS or (max_days is not None and max_days > MAX_DAYS):
        raise _invalid("policy_days_invalid", f"min_days and max_days are at most {MAX_DAYS} (100 years)")
    if max_days is not None and max_days < min_days:
        raise _invalid("policy_max_below_min", f"max_days {max_days} is below min_days {min_days}")


def _description(text: str | None) -> str | None:
    if text is not None and len(text) > MAX_DESCRIPTION:
        raise _invalid("policy_description_invalid", f"a description is at most {MAX_DESCRIPTION} characters")
    if text is None:
        return None
    return text.strip() or None


def _days(n: int | None) -> str:
    return "none" if n is None else str(n)


# --- reading ------------------------------------------------------------------------------------------------
def get(s: Session, name: str) -> RetentionPolicy:
    p = s.scalar(select(RetentionPolicy).where(RetentionPolicy.name == name))
    if p is None:
        raise NvrError(Kind.NOT_FOUND, "policy_not_found", f"no retention policy {name!r}")
    return p


def default(s: Session) -> RetentionPolicy:
    p = s.scalar(select(RetentionPolicy).where(RetentionPolicy.is_default.is_(True)))
    if p is None:
        raise NvrError(Kind.FAILED_PRECONDITION, "policy_default_missing", "no default retention policy exists")
    return p


def list_policies(s: Session) -> list[RetentionPolicy]:
    return list(s.scalars(select(RetentionPolicy).order_by(RetentionPolicy.name)))


def _cameras_query(policy_id: int) -> Select[Any]:
    return select(Camera.id).where(Camera.policy_id == policy_id)


def cameras_of(s: Session, policy_id: int) -> list[str]:
    return list(s.scalars(_cameras_query(policy_id).order_by(Camera.id)))


def locked_camera(s: Session, camera_id: str) -> Camera:
    """The camera's row, read afresh and locked for the rest of the transaction (``camera_not_found`` if none), for
    an audited change of its record (here and in api.cameras): two changes of one camera then take turns, so each
    event names the digest of the record its own change left, never one computed from a stale copy.

    PostgreSQL: ``SELECT … FOR NO KEY UPDATE`` (rows that merely reference the camera are not held up). SQLite has
    no row locks and its driver opens a transaction only at the first write: a no-op write takes the database's
    write lock first, so what is read next cannot change before commit."""
    registry.validate_id(camera_id)
    q = select(Camera).where(Camera.id == camera_id).execution_options(populate_existing=True)
    if s.get_bind().dialect.name == "sqlite":
        s.execute(
            sql_update(Camera).where(Camera.id == camera_id).values(updated_us=Camera.updated_us),
            execution_options={"synchronize_session": False},
        )
    else:
        q = q.with_for_update(key_share=True)
    cam = s.scalar(q)
    if cam is None:
        raise NvrError(Kind.NOT_FOUND, "camera_not_found", f"no camera {camera_id!r}")
    return cam


def policy_of(s: Session, camera_id: str) -> RetentionPolicy:
    return s.scalars(
        select(RetentionPolicy).join(Camera, Camera.policy_id == RetentionPolicy.id).where(Camera.id == camera_id)
    ).one()


def read_all(s: Session, actor: Actor, meta: RequestMeta, now_us: int, floor_days: int) -> list[dict[str, Any]]:
    """``GET /retention/policies``: every policy as shown (:func:`view`), and one ``retention.policy.list`` event
    naming how many."""
    found = [view(s, p, floor_days) for p in list_policies(s)]
    record(s, now_us, actor, meta, Event("retention.policy.list", "allowed", reason=f"{len(found)} policy(ies)"))
    return found


def read(s: Session, actor: Actor, meta: RequestMeta, now_us: int, floor_days: int, name: str) -> dict[str, Any]:
    """``GET /retention/policies/{name}``: the policy as shown (``policy_not_found``), and one
    ``retention.policy.read`` event."""
    found = view(s, get(s, name), floor_days)
    record(s, now_us, actor, meta, Event("retention.policy.read", "allowed", object_id=f"policy:{name}"))
    return found


def view(s: Session, p: RetentionPolicy, floor_days: int) -> dict[str, Any]:
    """The policy as shown: ``effective_min_days`` is what segments finished now get (the floor may be higher)."""
    return {
        "name": p.name,
        "min_days": p.min_days,
        "effective_min_days": max(p.min_days, floor_days),
        "max_days": p.max_days,
        "is_default": p.is_default,
        "description": p.description,
        "cameras": cameras_of(s, p.id),
        "created": iso(p.created_us),
        "updated": iso(p.updated_us),
    }


# --- changing -----------------------------------------------------------------------------------------------
def _extend(s: Session, camera_ids: Select[Any] | list[str], days: int) -> int:
    """Move ``retain_until`` of the cameras' segments to end + ``days`` where that is later; never earlier.

    One set-based statement. Segments on the garbage list (``sweep_batch_id`` set) are already being deleted and
    are left alone: the sweeper re-checks retention after marking and unmarks what is protected again."""
    keep_until = Segment.end_us + days * DAY_US
    result = s.execute(
        sql_update(Segment)
        .where(
            Segment.camera_id.in_(camera_ids), Segment.sweep_batch_id.is_(None), keep_until > Segment.retain_until_us
        )
        .values(retain_until_us=keep_until)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _audit(s: Session, ch: Change, action: str, name: str, reason: str, camera_id: str | None = None) -> None:
    """One event for policy ``name``; ``reason`` already ends with the digest (:func:`with_digest`) where a record
    remains."""
    ev = Event(action, "ok", camera_id=camera_id, object_id=f"policy:{name}", reason=reason)
    record(s, ch.now_us, ch.actor, ch.meta, ev)


def _with_note(reason: str, warnings: list[CapacityWarning]) -> str:
    note = capacity.acknowledged_note(warnings)
    return f"{reason}; {note}" if note else reason


def _check(s: Session, ch: Change, **kw: Any) -> list[CapacityWarning]:
    return capacity.check_change(
        s, ch.settings, ch.now_us, ch.settings.effective_volumes, acknowledge=ch.acknowledge, **kw
    )


def create(
    s: Session, ch: Change, name: str, min_days: int, max_days: int | None = None, description: str | None = None
) -> Saved:
    """A new policy, used by no camera yet (so nothing to extend and nothing for the capacity forecast)."""
    validate_name(name)
    _validate_days(min_days, max_days, ch.floor_days)
    text = _description(description)
    if s.scalar(select(RetentionPolicy.id).where(RetentionPolicy.name == name)) is not None:
        raise NvrError(Kind.CONFLICT, "policy_exists", f"retention policy {name!r} already exists")
    p = RetentionPolicy(
        name=name,
        min_days=min_days,
        max_days=max_days,
        is_default=False,
        description=text,
        created_us=ch.now_us,
        updated_us=ch.now_us,
    )
    s.add(p)
    s.flush()
    reason = f"min_days={min_days} max_days={_days(max_days)}"
    _audit(s, ch, "retention.policy.create", name, with_digest(reason, policy_digest(p)))
    return Saved(p)


def _cap(max_days: int | None, min_days: int) -> float:
    return float("inf") if max_days is None else max(max_days, min_days)


def update(
    s: Session,
    ch: Change,
    name: str,
    *,
    min_days: int | None = None,
    max_days: int | None = KEEP,
    description: str | None = None,
) -> Saved:
    """Change ``min_days``, ``max_days`` (``None`` clears it, :data:`KEEP` leaves it) or the description.

    Raising ``min_days`` extends the existing segments of every camera on the policy; lowering it changes none."""
    p = get(s, name)
    flag_policy_if_edited(s, p, ch.now_us)
    new_min = p.min_days if min_days is None else min_days
    new_max = p.max_days if max_days is KEEP else max_days
    _validate_days(new_min, new_max, ch.floor_days, check_floor=min_days is not None)
    text = p.description if description is None else _description(description)
    cams = cameras_of(s, p.id)
    warnings: list[CapacityWarning] = []
    if cams and (new_min > p.min_days or _cap(new_max, new_min) > _cap(p.max_days, p.min_days)):
        warnings = _check(
            s,
            ch,
            min_days_override=dict.fromkeys(cams, new_min),
            max_days_override=dict.fromkeys(cams, new_max),
        )
    changes = [
        f"{k} {_days(old)} → {_days(new)}"
        for k, old, new in (("min_days", p.min_days, new_min), ("max_days", p.max_days, new_max))
        if old != new
    ]
    if text != p.description:
        changes.append("description changed")
    extended = 0
    if new_min > p.min_days:
        extended = _extend(s, _cameras_query(p.id), max(new_min, ch.floor_days))
        changes.append(f"retain_until extended on {extended} segment(s) of {len(cams)} camera(s)")
    p.min_days, p.max_days, p.description, p.updated_us = new_min, new_max, text, ch.now_us
    s.flush()
    reason = _with_note("; ".join(changes) or "no change", warnings)
    _audit(s, ch, "retention.policy.update", name, with_digest(reason, policy_digest(p)))
    return Saved(p, warnings, extended)


def delete(s: Session, ch: Change, name: str) -> None:
    p = get(s, name)
    if p.is_default:
        raise NvrError(
            Kind.CONFLICT, "policy_in_use", f"{name!r} is the default policy; make another policy the default first"
        )
    cams = cameras_of(s, p.id)
    if cams:
        shown = ", ".join(cams[:10]) + (", …" if len(cams) > 10 else "")
        raise NvrError(
            Kind.CONFLICT,
            "policy_in_use",
            f"{len(cams)} camera(s) use policy {name!r} ({shown}); assign them another policy first",
        )
    last = policy_digest(p)
    s.delete(p)
    s.flush()
    reason = f"min_days={p.min_days} max_days={_days(p.max_days)}" + deleted_note(p.id, last)
    _audit(s, ch, "retention.policy.delete", name, reason)


def set_default(s: Session, ch: Change, name: str) -> RetentionPolicy:
    """Make ``name`` the default for cameras added from now on; cameras keep the policy they have.

    Two records change (the previous default loses ``is_default``): both get the change's time as ``updated_us``,
    and the one event names both digests, the previous default's before the new one's."""
    p = get(s, name)
    old = default(s)
    for rec in {p.id: p, old.id: old}.values():
        flag_policy_if_edited(s, rec, ch.now_us)
    # One statement over every row, so two concurrent calls cannot leave two defaults behind.
    s.execute(
        sql_update(RetentionPolicy)
        .values(is_default=RetentionPolicy.id == p.id)
        .execution_options(synchronize_session="fetch")
    )
    p.updated_us = ch.now_us
    if old.id != p.id:
        old.updated_us = ch.now_us
    s.flush()
    s.refresh(p)
    reason = f"default policy {old.name} → {name}"
    if old.id != p.id:
        s.refresh(old)
        reason += previous_default_note(old.name, policy_digest(old))
    _audit(s, ch, "retention.policy.default", name, with_digest(reason, policy_digest(p)))
    return p


def assign(s: Session, ch: Change, camera_id: str, name: str) -> Saved:
    """Put a camera on a policy. A policy keeping footage longer extends the camera's existing segments."""
    cam = locked_camera(s, camera_id)
    flag_if_edited(s, cam, ch.now_us)
    p = get(s, name)
    old = policy_of(s, camera_id)
    warnings: list[CapacityWarning] = []
    if p.min_days > old.min_days or _cap(p.max_days, p.min_days) > _cap(old.max_days, old.min_days):
        warnings = _check(s, ch, min_days_override={camera_id: p.min_days}, max_days_override={camera_id: p.max_days})
    extended = 0
    if p.min_days > old.min_days:
        extended = _extend(s, [camera_id], max(p.min_days, ch.floor_days))
    cam.policy_id, cam.updated_us = p.id, ch.now_us
    s.flush()
    digest = camera_digest(cam)
    reason = (
        f"policy {old.name} (min_days {old.min_days}, max_days {_days(old.max_days)}) → {p.name} "
        f"(min_days {p.min_days}, max_days {_days(p.max_days)}); retain_until extended on {extended} segment(s)"
    )
    _audit(
        s, ch, "retention.policy.assign", name, with_digest(_with_note(reason, warnings), digest), camera_id=camera_id
    )
    return Saved(p, warnings, extended)


def place_new_camera(s: Session, ch: Change, camera_id: str, name: str | None) -> Saved:
    """A camera just added (flushed, no footage yet): put it on ``name`` (the default when None) and check that the
    volumes can keep its footage too, its rate estimated from the cameras already measured. The caller
    (api.cameras.create_camera) audits the camera's creation, with :func:`creation_note` in the reason."""
    p = get(s, name) if name is not None else default(s)
    cam = registry.get(s, camera_id)
    cam.policy_id = p.id
    s.flush()
    return Saved(p, _check(s, ch, new_camera=camera_id))


def creation_note(saved: Saved) -> str:
    return _with_note(f"policy={saved.policy.name}", saved.warnings)
