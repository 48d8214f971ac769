"""Grants: who may reach which footage, doing what, for how long, and the check made on every request.

A grant names one user, a set of cameras, actions (``live``, ``playback``, ``export``), a footage window (absolute,
or the last N days before each request), a validity of at most 365 days, a purpose, a case reference and a limit of
concurrent streams. People set its state (active, suspended, revoked; revoked is final); ``expired`` follows from
the clock. Who may issue one depends on each camera's share class (see :func:`_check_issuer`).

The use cases :func:`issue` (``grant.create``) and :func:`set_state` (``grant.suspend`` / ``grant.resume`` /
``grant.revoke``) check their rules and write their one audit event in the caller's transaction; :func:`create`
and :func:`change_state` are their rules without the event, for use cases that audit the step under their own
name (approving an access request, api.requests). A state change takes the grant's row lock before it reads the
state it changes, so two changes of one grant take turns: a resume racing a revoke can never revive a revoked grant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api.people import US_PER_DAY, Principal, get_user
from api.roles import ACTIONS, grantable_actions, parse_roles
from integrity.audit_log import Event, RequestMeta, record
from nvr import registry
from nvr.clock import iso
from nvr.errors import Kind, NvrError
from nvr.models import AccessRequest, Camera, Grant, GrantCamera, Token, User

MAX_VALIDITY_DAYS = 365
MAX_STREAMS = 16
MAX_CAMERAS = 1000
GRANT_STATES = ("active", "suspended", "revoked")
# state -> states a person may move it to
GRANT_TRANSITIONS = {"active": ("suspended", "revoked"), "suspended": ("active", "revoked"), "revoked": ()}
# the state a person asks for -> the audit action of that change
STATE_ACTIONS = {"suspended": "grant.suspend", "active": "grant.resume", "revoked": "grant.revoke"}


@dataclass
class GrantSpec:
    user_id: int
    cameras: list[str]
    actions: list[str]
    purpose: str
    case_ref: str
    valid_until_us: int
    valid_from_us: int | None = None
    window_start_us: int | None = None
    window_end_us: int | None = None
    window_last_days: int | None = None
    max_streams: int = 2


def effective_state(g: Grant, now_us: int) -> str:
    if g.state == "active" and now_us >= g.valid_until_us:
        return "expired"
    return g.state


def _fail(kind: Kind, code: str, message: str) -> NvrError:
    return NvrError(kind, code, message)


def _check_issuer(grantor: Principal, grantee: User, cam: Camera) -> None:
    """Share classes decide who may grant: ``unconditional`` any approver; ``authorized`` an approver of the owning
    unit; ``non_shared`` an approver of the owning unit, and only to users of that unit."""
    if cam.share_class == "unconditional":
        return
    if grantor.unit != cam.managing_unit:
        raise _fail(
            Kind.PERMISSION_DENIED,
            "grant_unit_mismatch",
            f"camera {cam.id!r} is managed by another unit; only an approver of that unit may grant it",
        )
    if cam.share_class == "non_shared" and grantee.unit != cam.managing_unit:
        raise _fail(
            Kind.PERMISSION_DENIED,
            "camera_not_shared",
            f"camera {cam.id!r} is not shared outside its managing unit; the grantee belongs to another unit",
        )


def validate(spec: GrantSpec, now_us: int) -> tuple[list[str], list[str]]:
    actions = sorted(set(spec.actions), key=ACTIONS.index) if set(spec.actions) <= set(ACTIONS) else None
    if not actions:
        raise _fail(Kind.INVALID_ARGUMENT, "grant_actions_invalid", f"actions must be a non-empty subset of {ACTIONS}")
    cameras = sorted(set(spec.cameras))
    if not cameras or len(cameras) > MAX_CAMERAS:
        raise _fail(Kind.INVALID_ARGUMENT, "grant_cameras_invalid", f"a grant names 1 to {MAX_CAMERAS} cameras")
    for c in cameras:
        registry.validate_id(c)
    absolute = spec.window_start_us is not None or spec.window_end_us is not None
    if absolute == (spec.window_last_days is not None):
        raise _fail(
            Kind.INVALID_ARGUMENT,
            "grant_window_invalid",
            "give the footage window either as start and end, or as last_days, not both",
        )
    if absolute:
        if spec.window_start_us is None or spec.window_end_us is None or spec.window_end_us <= spec.window_start_us:
            raise _fail(Kind.INVALID_ARGUMENT, "grant_window_invalid", "footage window needs start before end")
    elif not 1 <= (spec.window_last_days or 0) <= 3650:
        raise _fail(Kind.INVALID_ARGUMENT, "grant_window_invalid", "last_days must be between 1 and 3650")
    valid_from = spec.valid_from_us if spec.valid_from_us is not None else now_us
    if spec.valid_until_us <= max(valid_from, now_us):
        raise _fail(Kind.INVALID_ARGUMENT, "grant_validity_invalid", "valid_until must be after valid_from and now")
    if spec.valid_until_us - valid_from > MAX_VALIDITY_DAYS * US_PER_DAY:
        raise _fail(
            Kind.INVALID_ARGUMENT,
            "grant_validity_too_long",
            f"a grant is valid for at most {MAX_VALIDITY_DAYS} days; issue a new one when it ends",
        )
    if not spec.purpose.strip() or len(spec.purpose) > 2000:
        raise _fail(Kind.INVALID_ARGUMENT, "purpose_invalid", "purpose must be 1 to 2000 characters")
    if not spec.case_ref.strip() or len(spec.case_ref) > 200:
        raise _fail(Kind.INVALID_ARGUMENT, "case_ref_invalid", "case reference must be 1 to 200 characters")
    if not 1 <= spec.max_streams <= MAX_STREAMS:
        raise _fail(Kind.INVALID_ARGUMENT, "max_streams_invalid", f"max_streams must be between 1 and {MAX_STREAMS}")
    return actions, cameras


def _check_grantee(grantor: Principal, grantee: User, actions: list[str]) -> None:
    if grantee.id == grantor.user_id:
        raise _fail(Kind.PERMISSION_DENIED, "grant_self", "nobody may grant footage access to themselves")
    if grantee.state != "active":
        raise _fail(Kind.FAILED_PRECONDITION, "user_disabled", f"user {grantee.username!r} is disabled")
    roles = parse_roles(grantee.roles)
    allowed = grantable_actions(roles)
    if "export" in actions and "viewer" in roles:
        raise _fail(Kind.INVALID_ARGUMENT, "viewer_cannot_export", "a viewer's grant can never include export")
    refused = [a for a in actions if a not in allowed]
    if refused:
        raise _fail(
            Kind.INVALID_ARGUMENT,
            "grant_action_not_permitted",
            f"user {grantee.username!r} (roles {grantee.roles}) may not be granted {', '.join(refused)}",
        )


def _require_issuer(grantor: Principal) -> None:
    if not grantor.can("grants.issue"):
        raise _fail(Kind.PERMISSION_DENIED, "role_forbidden", "only an approver may issue or resume grants")


def create(s: Session, grantor: Principal, spec: GrantSpec, now_us: int) -> Grant:
    """Every rule of issuing a grant, and the new row; no audit event (see :func:`issue`)."""
    _require_issuer(grantor)
    actions, cameras = validate(spec, now_us)
    grantee = get_user(s, spec.user_id)
    _check_grantee(grantor, grantee, actions)
    for cid in cameras:
        _check_issuer(grantor, grantee, registry.get(s, cid))
    g = Grant(
        user_id=grantee.id,
        actions=",".join(actions),
        window_start_us=spec.window_start_us,
        window_end_us=spec.window_end_us,
        window_last_days=spec.window_last_days,
        valid_from_us=spec.valid_from_us if spec.valid_from_us is not None else now_us,
        valid_until_us=spec.valid_until_us,
        purpose=spec.purpose.strip(),
        case_ref=spec.case_ref.strip(),
        max_streams=spec.max_streams,
        state="active",
        state_reason=None,
        granted_by=grantor.user_id,
        created_us=now_us,
        updated_us=now_us,
    )
    s.add(g)
    s.flush()
    s.add_all(GrantCamera(grant_id=g.id, camera_id=c) for c in cameras)
    s.flush()
    return g


def issue(s: Session, grantor: Principal, meta: RequestMeta, spec: GrantSpec, now_us: int) -> Grant:
    """``POST /grants``: issue a grant under every rule of :func:`create`; one ``grant.create`` event naming the
    grantee, cameras and actions."""
    g = create(s, grantor, spec, now_us)
    ev = Event(
        "grant.create",
        "ok",
        object_id=f"grant:{g.id}",
        purpose=g.purpose,
        case_ref=g.case_ref,
        window_start_us=g.window_start_us,
        window_end_us=g.window_end_us,
        reason=f"user:{g.user_id} cameras={','.join(cameras_of(s, g.id))} actions={g.actions}",
    )
    record(s, now_us, grantor.actor, meta, ev)
    return g


def cameras_of(s: Session, grant_id: int) -> list[str]:
    return list(s.scalars(select(GrantCamera.camera_id).where(GrantCamera.grant_id == grant_id).order_by("camera_id")))


def get_visible(s: Session, p: Principal, grant_id: int, *, fresh: bool = False) -> Grant:
    """The grant if this person may see it (its holder; approvers and admins any): ``grant_not_found`` otherwise,
    exactly as for a grant that does not exist. ``fresh``: read the row again even if the session holds it."""
    g = s.get(Grant, grant_id, populate_existing=fresh) if 0 < grant_id < 2**62 else None
    if g is None or (g.user_id != p.user_id and not p.can("grants.oversee")):
        raise _fail(Kind.NOT_FOUND, "grant_not_found", f"no grant {grant_id}")
    return g


def change_state(s: Session, p: Principal, g: Grant, to_state: str, reason: str | None, now_us: int) -> Grant:
    """Suspend, resume or revoke. Suspending and revoking stop access at the next request, including streams that
    are running. An admin may suspend or revoke any grant (an emergency brake); resuming needs an approver
    entitled to issue it again."""
    if to_state == "active":
        _require_issuer(p)
    elif not p.can("grants.issue") and not p.can("users.manage"):
        raise _fail(Kind.PERMISSION_DENIED, "role_forbidden", "only an approver or an admin may change a grant")
    if effective_state(g, now_us) == "expired" and to_state == "active":
        raise _fail(Kind.FAILED_PRECONDITION, "grant_expired", f"grant {g.id} has expired; issue a new one")
    if to_state not in GRANT_TRANSITIONS[g.state]:
        raise _fail(
            Kind.FAILED_PRECONDITION, "grant_state_invalid", f"grant {g.id} is {g.state}; it cannot become {to_state}"
        )
    if (p.can("grants.issue") and not p.can("users.manage")) or to_state == "active":
        grantee = get_user(s, g.user_id)
        if to_state == "active":
            _check_grantee(p, grantee, g.actions.split(","))
        for cid in cameras_of(s, g.id):
            _check_issuer(p, grantee, registry.get(s, cid))
    if reason is not None and len(reason) > 2000:
        raise _fail(Kind.INVALID_ARGUMENT, "reason_invalid", "reason is longer than 2000 characters")
    g.state = to_state
    g.state_reason = reason
    g.updated_us = now_us
    s.flush()
    return g


def set_state(
    s: Session, p: Principal, meta: RequestMeta, grant_id: int, to_state: str, reason: str | None, now_us: int
) -> Grant:
    """``POST /grants/{id}/suspend|resume|revoke``: the grant's row lock first, then the grant as it is now (a
    grant this person may not see is ``grant_not_found``), every rule of :func:`change_state`, and one
    ``grant.suspend`` / ``grant.resume`` / ``grant.revoke`` event with the reason given."""
    if to_state not in STATE_ACTIONS:
        raise _fail(Kind.INVALID_ARGUMENT, "grant_state_invalid", f"a grant can become {', '.join(STATE_ACTIONS)}")
    if 0 < grant_id < 2**62:
        lock(s, grant_id)
    g = change_state(s, p, get_visible(s, p, grant_id, fresh=True), to_state, reason, now_us)
    record(s, now_us, p.actor, meta, Event(STATE_ACTIONS[to_state], "ok", object_id=f"grant:{g.id}", reason=reason))
    return g


def list_grants(s: Session, p: Principal, user_id: int | None = None, state: str | None = None) -> list[Grant]:
    q = select(Grant).order_by(Grant.id)
    if not p.can("grants.oversee"):
        q = q.where(Grant.user_id == p.user_id)
    elif user_id is not None:
        q = q.where(Grant.user_id == user_id)
    if state in GRANT_STATES:
        q = q.where(Grant.state == state)
    return list(s.scalars(q.limit(1000)))


def window_view(x: Grant | AccessRequest) -> dict[str, Any]:
    """The footage window of a grant or an access request, as the API shows it."""
    if x.window_last_days is not None:
        return {"last_days": x.window_last_days}
    return {"start": iso(x.window_start_us), "end": iso(x.window_end_us)}


def view(s: Session, g: Grant, now_us: int) -> dict[str, Any]:
    return {
        "id": g.id,
        "user_id": g.user_id,
        "cameras": cameras_of(s, g.id),
        "actions": g.actions.split(","),
        "window": window_view(g),
        "valid_from": iso(g.valid_from_us),
        "valid_until": iso(g.valid_until_us),
        "purpose": g.purpose,
        "case_ref": g.case_ref,
        "max_streams": g.max_streams,
        "state": effective_state(g, now_us),
        "state_reason": g.state_reason,
        "granted_by": g.granted_by,
        "created": iso(g.created_us),
        "updated": iso(g.updated_us),
    }


# --- the check made on every footage request ----------------------------------------------------------------
_DENIAL_ORDER = ("grant_revoked", "grant_expired", "grant_not_yet_valid", "grant_suspended")


def authorize(s: Session, p: Principal, camera_id: str, action: str, start_us: int, end_us: int, now_us: int) -> Grant:
    """The grant that allows ``action`` on ``camera_id`` over [start_us, end_us) now, or the reason it is refused.

    A camera no grant of the user names answers ``camera_not_found`` (404), the same as a camera that does not
    exist, so ids cannot be probed. When some grant names it, the refusal says what is wrong (403).
    """
    if not p.can("footage"):
        raise _fail(Kind.PERMISSION_DENIED, "role_forbidden", "this role never has access to footage")
    naming = _grants_naming(s, p, camera_id)
    if action not in grantable_actions(p.roles):
        raise _fail(Kind.PERMISSION_DENIED, "action_not_granted", f"your roles do not allow {action}")
    with_action = [g for g in naming if action in g.actions.split(",")]
    if not with_action:
        raise _fail(Kind.PERMISSION_DENIED, "action_not_granted", f"no grant of yours allows {action} on this camera")
    live = _current(with_action, now_us)
    for g in live:
        if window_covers(g, start_us, end_us, now_us):
            return g
    raise _fail(
        Kind.PERMISSION_DENIED,
        "outside_grant_window",
        "the requested time is outside the footage window of your grant(s) for this camera",
    )


def _grants_naming(s: Session, p: Principal, camera_id: str) -> list[Grant]:
    """Every grant of the user naming the camera, in any state; ``camera_not_found`` when there is none."""
    registry.validate_id(camera_id)
    found = list(
        s.scalars(
            select(Grant)
            .join(GrantCamera, GrantCamera.grant_id == Grant.id)
            .where(Grant.user_id == p.user_id, GrantCamera.camera_id == camera_id)
            .order_by(Grant.id)
        )
    )
    if not found:  # grant_cameras.camera_id is a foreign key: a grant naming a camera proves it exists
        raise _fail(Kind.NOT_FOUND, "camera_not_found", f"no camera {camera_id!r}")
    return found


def _current(candidates: list[Grant], now_us: int) -> list[Grant]:
    """The grants in force now; when there are none, the refusal naming why (revoked before expired before ...)."""
    live: list[Grant] = []
    reasons: set[str] = set()
    for g in candidates:
        state = effective_state(g, now_us)
        if state == "active" and now_us < g.valid_from_us:
            reasons.add("grant_not_yet_valid")
        elif state != "active":
            reasons.add(f"grant_{state}")
        else:
            live.append(g)
    if not live:
        code = next(c for c in _DENIAL_ORDER if c in reasons)
        raise _fail(Kind.PERMISSION_DENIED, code, f"your grant for this camera is {code.removeprefix('grant_')}")
    return live


def check_camera_visible(s: Session, p: Principal, camera_id: str, now_us: int) -> None:
    """May this person see the camera's record? 404 unless some grant names it; 403 when none is in force."""
    _current(_grants_naming(s, p, camera_id), now_us)


def window_covers(g: Grant, start_us: int, end_us: int, now_us: int) -> bool:
    if g.window_last_days is not None:
        return start_us >= now_us - g.window_last_days * US_PER_DAY
    assert g.window_start_us is not None and g.window_end_us is not None
    return g.window_start_us <= start_us and end_us <= g.window_end_us


def visible_camera_ids(s: Session, p: Principal, now_us: int) -> set[str]:
    """Cameras some grant of the user covers now (any action)."""
    rows = s.execute(
        select(GrantCamera.camera_id)
        .join(Grant, GrantCamera.grant_id == Grant.id)
        .where(
            Grant.user_id == p.user_id,
            Grant.state == "active",
            Grant.valid_from_us <= now_us,
            Grant.valid_until_us > now_us,
        )
    )
    return {r[0] for r in rows}


def still_allowed(s: Session, grant_id: int, token_id: int | None, now_us: int) -> str | None:
    """For a stream in progress: None while its grant, token and user still hold, else the reason it must end."""
    g = s.get(Grant, grant_id)
    if g is None:
        return "grant_revoked"
    state = effective_state(g, now_us)
    if state != "active":
        return f"grant_{state}"
    user = s.get(User, g.user_id)
    if user is None or user.state != "active":
        return "user_disabled"
    if token_id is not None:
        t = s.get(Token, token_id)
        if t is None or t.revoked_us is not None:
            return "token_revoked"
        if t.expires_us <= now_us:
            return "token_expired"
    return None


def lock(s: Session, grant_id: int) -> None:
    """Take the grant's row lock (a no-op write) so concurrent stream starts count its streams one at a time."""
    s.execute(update(Grant).where(Grant.id == grant_id).values(updated_us=Grant.updated_us))
