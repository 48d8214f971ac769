"""Access requests: an officer asks for footage for a case; an approver entitled to the cameras approves (which
issues a grant to the officer under every rule of api.grants) or rejects; the officer may withdraw while pending."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api import grants
from api.people import Principal
from api.roles import grantable_actions
from nvr import registry
from nvr.clock import iso
from nvr.errors import Kind, NvrError
from nvr.models import AccessRequest, Grant

REQUEST_STATES = ("pending", "approved", "rejected", "withdrawn")


def create(s: Session, p: Principal, spec: grants.GrantSpec, now_us: int) -> AccessRequest:
    if not p.can("footage.request"):
        raise NvrError(Kind.PERMISSION_DENIED, "role_forbidden", "only an officer may request footage for a case")
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
    return r


def get_visible(s: Session, p: Principal, request_id: int) -> AccessRequest:
    r = s.get(AccessRequest, request_id) if 0 < request_id < 2**62 else None
    if r is None or (r.requester_id != p.user_id and not p.can("grants.oversee")):
        raise NvrError(Kind.NOT_FOUND, "request_not_found", f"no access request {request_id}")
    return r


def list_requests(s: Session, p: Principal, state: str | None) -> list[AccessRequest]:
    q = select(AccessRequest).order_by(AccessRequest.id)
    if not p.can("grants.oversee"):
        q = q.where(AccessRequest.requester_id == p.user_id)
    if state in REQUEST_STATES:
        q = q.where(AccessRequest.state == state)
    return list(s.scalars(q.limit(1000)))


def _pending(r: AccessRequest) -> None:
    if r.state != "pending":
        raise NvrError(Kind.FAILED_PRECONDITION, "request_state_invalid", f"access request {r.id} is {r.state}")


def approve(s: Session, p: Principal, r: AccessRequest, reason: str | None, now_us: int) -> Grant:
    """Issue the grant the request asks for, checked exactly as if the approver had written it."""
    _pending(r)
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
    return g


def reject(s: Session, p: Principal, r: AccessRequest, reason: str | None, now_us: int) -> None:
    if not p.can("grants.issue"):
        raise NvrError(Kind.PERMISSION_DENIED, "role_forbidden", "only an approver may reject a request")
    _pending(r)
    r.state, r.decided_by, r.decided_us, r.decision_reason = "rejected", p.user_id, now_us, reason
    s.flush()


def withdraw(s: Session, p: Principal, r: AccessRequest, now_us: int) -> None:
    if r.requester_id != p.user_id:
        raise NvrError(Kind.PERMISSION_DENIED, "role_forbidden", "only the requester may withdraw a request")
    _pending(r)
    r.state, r.decided_us = "withdrawn", now_us
    s.flush()


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
