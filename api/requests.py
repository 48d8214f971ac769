"""Access requests: an officer asks for footage for a case; an approver entitled to the cameras approves (which
issues a grant to the officer under every rule of api.grants) or rejects; the officer may withdraw while pending.

Each use case (:func:`create`, :func:`approve`, :func:`reject`, :func:`withdraw`) checks its rules and writes its
one audit event (``request.create``, ``request.approve`` naming the grant it issued, ``request.reject``,
``request.withdraw``) in the caller's transaction. A decision takes the request's row lock before it reads the
state it changes, so two decisions on one request take turns: the second finds it decided
(``request_state_invalid``), and no request is ever approved twice or approved after it was withdrawn.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api import grants
from api.people import Principal
from api.roles import grantable_actions
from integrity.audit_log import Event, RequestMeta, record
from nvr import registry
from nvr.clock import iso
from nvr.errors import Kind, NvrError
from nvr.models import AccessRequest, Grant

REQUEST_STATES = ("pending", "approved", "rejected", "withdrawn")


def create(s: Session, p: Principal, meta: RequestMeta, spec: grants.GrantSpec, now_us: int) -> AccessRequest:
    """Ask for access (officers) for oneself: ``spec.user_id`` must be the requester. Checked as a grant would be
    (:func:`api.grants.validate`), with the actions the requester's roles may be given; one ``request.create``."""
    if not p.can("footage.request"):
        raise NvrError(Kind.PERMISSION_DENIED, "role_forbidden", "only an officer may request footage for a case")
    if spec.user_id != p.user_id:
        raise NvrError(Kind.PERMISSION_DENIED, "role_forbidden", "an access request is always for the requester")
    actions, cameras = grants.validate(spec, now_us)
    refused = [a for a in actions if a not in grantable_actions(p.roles)]
    if refused:
        raise NvrError(
            Kind.INVALID_ARGUMENT, "grant_action_not_permitted", f"your roles cannot be granted {', '.join(refused)}"
        )
    for cid in cameras:
        registry.get(s, cid)
    r = AccessRequest(
        requester_id=p.user_id,
        cameras=",".join(cameras),
        actions=",".join(actions),
        window_start_us=spec.window_start_us,
        window_end_us=spec.window_end_us,
        window_last_days=spec.window_last_days,
        valid_until_us=spec.valid_until_us,
        purpose=spec.purpose.strip(),
        case_ref=spec.case_ref.strip(),
        max_streams=spec.max_streams,
        state="pending",
        created_us=now_us,
    )
    s.add(r)
    s.flush()
    ev = Event(
        "request.create",
        "ok",
        object_id=f"request:{r.id}",
        purpose=r.purpose,
        case_ref=r.case_ref,
        reason=f"cameras={r.cameras} actions={r.actions}",
    )
    record(s, now_us, p.actor, meta, ev)
    return r


def get_visible(s: Session, p: Principal, request_id: int, *, fresh: bool = False) -> AccessRequest:
    """The request if this person may see it (its requester; approvers and admins any): ``request_not_found``
    otherwise, exactly as for one that does not exist. ``fresh``: read the row again even if the session holds it."""
    r = s.get(AccessRequest, request_id, populate_existing=fresh) if 0 < request_id < 2**62 else None
    if r is None or (r.requester_id != p.user_id and not p.can("grants.oversee")):
        raise NvrError(Kind.NOT_FOUND, "request_not_found", f"no access request {request_id}")
    return r


def _locked(s: Session, p: Principal, request_id: int) -> AccessRequest:
    """:func:`get_visible` under the request's row lock (a no-op write, as api.grants.lock), read afresh."""
    if 0 < request_id < 2**62:
        s.execute(
            update(AccessRequest).where(AccessRequest.id == request_id).values(state=AccessRequest.state),
            execution_options={"synchronize_session": False},
        )
    return get_visible(s, p, request_id, fresh=True)


def list_requests(s: Session, p: Principal, state: str | None) -> list[AccessRequest]:
    q = select(AccessRequest).order_by(AccessRequest.id)
    if not p.can("grants.oversee"):
        q = q.where(AccessRequest.requester_id == p.user_id)
    if state in REQUEST_STATES:
        q = q.where(AccessRequest.state == state)
    return list(s.scalars(q.limit(1000)))


def _reason(reason: str | None) -> str | None:
    if reason is not None and len(reason) > 2000:
        raise NvrError(Kind.INVALID_ARGUMENT, "reason_invalid", "reason is longer than 2000 characters")
    return reason


def _pending(r: AccessRequest) -> None:
    if r.state != "pending":
        raise NvrError(Kind.FAILED_PRECONDITION, "request_state_invalid", f"access request {r.id} is {r.state}")


def approve(
    s: Session, p: Principal, meta: RequestMeta, request_id: int, reason: str | None, now_us: int
) -> tuple[AccessRequest, Grant]:
    """Issue the grant the request asks for, checked exactly as if the approver had written it
    (:func:`api.grants.create`): one ``request.approve`` event naming the grant."""
    r = _locked(s, p, request_id)
    _pending(r)
    reason = _reason(reason)
    spec = grants.GrantSpec(
        user_id=r.requester_id,
        cameras=r.cameras.split(","),
        actions=r.actions.split(","),
        purpose=r.purpose,
        case_ref=r.case_ref,
        valid_until_us=r.valid_until_us,
        window_start_us=r.window_start_us,
        window_end_us=r.window_end_us,
        window_last_days=r.window_last_days,
        max_streams=r.max_streams,
    )
    g = grants.create(s, p, spec, now_us)
    r.state, r.decided_by, r.decided_us, r.decision_reason, r.grant_id = "approved", p.user_id, now_us, reason, g.id
    s.flush()
    ev = Event(
        "request.approve",
        "ok",
        object_id=f"request:{r.id}",
        purpose=r.purpose,
        case_ref=r.case_ref,
        reason=f"grant:{g.id}",
    )
    record(s, now_us, p.actor, meta, ev)
    return r, g


def reject(
    s: Session, p: Principal, meta: RequestMeta, request_id: int, reason: str | None, now_us: int
) -> AccessRequest:
    """An approver turns the request down; one ``request.reject`` event with the reason given."""
    r = _locked(s, p, request_id)
    if not p.can("grants.issue"):
        raise NvrError(Kind.PERMISSION_DENIED, "role_forbidden", "only an approver may reject a request")
    _pending(r)
    reason = _reason(reason)
    r.state, r.decided_by, r.decided_us, r.decision_reason = "rejected", p.user_id, now_us, reason
    s.flush()
    record(s, now_us, p.actor, meta, Event("request.reject", "ok", object_id=f"request:{r.id}", reason=reason))
    return r


def withdraw(s: Session, p: Principal, meta: RequestMeta, request_id: int, now_us: int) -> AccessRequest:
    """The requester takes back a pending request; one ``request.withdraw`` event."""
    r = _locked(s, p, request_id)
    if r.requester_id != p.user_id:
        raise NvrError(Kind.PERMISSION_DENIED, "role_forbidden", "only the requester may withdraw a request")
    _pending(r)
    r.state, r.decided_us = "withdrawn", now_us
    s.flush()
    record(s, now_us, p.actor, meta, Event("request.withdraw", "ok", object_id=f"request:{r.id}"))
    return r


def view(r: AccessRequest) -> dict[str, Any]:
    return {
        "id": r.id,
        "requester_id": r.requester_id,
        "cameras": r.cameras.split(","),
        "actions": r.actions.split(","),
        "window": grants.window_view(r),
        "valid_until": iso(r.valid_until_us),
        "purpose": r.purpose,
        "case_ref": r.case_ref,
        "max_streams": r.max_streams,
        "state": r.state,
        "decided_by": r.decided_by,
        "decided": iso(r.decided_us),
        "decision_reason": r.decision_reason,
        "grant_id": r.grant_id,
        "created": iso(r.created_us),
    }
