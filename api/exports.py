"""Export requests: one matter, one application, two staff, and an approver of every owning unit.

The workflow (docs/exports/README.md):

1. An ``officer`` files a request: cameras, footage window, purpose, case reference, legal basis, recipient and the
   destination of the copy (``pending_cosign``).
2. A second ``officer`` of the same unit co-signs it; never the requester (``pending_approval``, or ``approved``
   at once on the grant route).
3. An ``approver`` of each camera's owning unit approves or rejects it with a reason. One rejection rejects the
   request; when every owning unit has approved, it is ``approved`` until ``export_approval_valid_days`` pass.
   The *grant route* skips this step: every camera is ``unconditional`` and the requester holds an ``export`` grant
   covering all of them over the whole window (checked at filing and again when the bundle is made).
4. The requester or the co-signer starts the export job (api.export_jobs); both, and only they, may download the
   bundle, ``export_max_downloads`` times in all, until it expires.

**Encrypted copies** (docs/exports/encrypted-copies.md): a request may name a recipient public key (X25519 or SM2,
PEM). It is checked when the request is filed (``recipient_key_invalid``), kept with its type and fingerprint on the
request, named in every audit event of the request (:func:`event`), and the job seals the finished ZIP into an
envelope to that key (:func:`seal_for_recipient`, integrity.envelope); only the envelope is kept and served.

The requester may withdraw the request until a bundle has been made. Every step is one audit event written here, in
the step's own transaction. Nobody approves a request they filed or co-signed: two people means two people.

**The viewer cap** (:func:`require_may_copy`): a person holding ``viewer`` never copies footage, whatever other roles
they hold. Every step that leads to a copy in someone's hands checks it with the roles held *now*: filing,
co-signing, starting the job, the job itself when it runs, and each download (403 ``viewer_cannot_copy``).

**Races** (docs/design/concurrency.md): every step that changes a request takes the request's row lock first
(:func:`locked_request`), so two co-signatures, two units' approvals, a withdrawal and a job start each see the
outcome of the one before them; a decision made by the last owning unit at the same moment as another one still
approves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import false, or_, select, update
from sqlalchemy.orm import Session

from api import audit, grants
from api.footage import segments_in
from api.people import Principal, require_text
from api.roles import grantable_actions
from integrity import envelope, keys, suites
from nvr import registry
from nvr.clock import iso
from nvr.errors import Kind, NvrError
from nvr.models import ExportApproval, ExportJob, ExportRequest, Grant, User

if TYPE_CHECKING:
    from nvr.db import Database

MAX_CAMERAS = 64
STATES = ("pending_cosign", "pending_approval", "approved", "rejected", "withdrawn", "expired")
US_PER_HOUR = 3_600_000_000
US_PER_DAY = 24 * US_PER_HOUR


@dataclass
class ExportSpec:
    cameras: list[str]
    start_us: int
    end_us: int
    purpose: str
    case_ref: str
    legal_basis: str
    recipient: str
    destination: str
    grant_id: int | None = None
    recipient_public_key: str | None = None
    """PEM of the X25519 or SM2 public key the bundle is to be encrypted to; None for a bundle in the clear."""


def effective_state(r: ExportRequest, now_us: int, has_bundle: bool = False) -> str:
    """``expired``: approved, not yet exported, and past ``approved_until_us``."""
    if r.state == "approved" and not has_bundle and r.approved_until_us is not None and now_us >= r.approved_until_us:
        return "expired"
    return r.state


def cameras_of(r: ExportRequest) -> list[str]:
    return r.cameras.split(",")


def _deny(code: str, message: str) -> NvrError:
    return NvrError(Kind.PERMISSION_DENIED, code, message)


def may_copy(roles: tuple[str, ...]) -> bool:
    """Whether a person with these roles may ever hold a copy of footage: only when a grant could give them
    ``export`` (api.roles.grantable_actions, where ``viewer`` caps every other role)."""
    return "viewer" not in roles and "export" in grantable_actions(roles)


def require_may_copy(p: Principal, what: str) -> None:
    """The viewer cap, for every step that puts a copy of footage in someone's hands (filing, co-signing, starting
    the job, the job itself, downloading). ``viewer`` beside any other role: 403 ``viewer_cannot_copy``; roles that
    never carry ``export`` (an officer who became an operator since filing): 403 ``role_forbidden``."""
    if "viewer" in p.roles:
        raise _deny(
            "viewer_cannot_copy",
            f"a viewer never copies footage, whatever other roles they hold; you may not {what}",
        )
    if not may_copy(p.roles):
        raise _deny("role_forbidden", f"your roles never receive copies of footage; you may not {what}")


def _sqlite(s: Session) -> bool:
    return s.get_bind().dialect.name == "sqlite"


def locked_request(s: Session, request_id: int) -> ExportRequest:
    """The request's row, locked until the transaction ends and read again after the lock (so what a concurrent step
    committed meanwhile is seen). PostgreSQL: ``SELECT … FOR UPDATE``. SQLite has no row locks and its driver opens
    the transaction at the first write: a no-op write takes the database's write lock first."""
    if _sqlite(s):
        s.execute(
            update(ExportRequest).where(ExportRequest.id == request_id).values(updated_us=ExportRequest.updated_us),
            execution_options={"synchronize_session": False},
        )
    r = s.scalar(
        select(ExportRequest)
        .where(ExportRequest.id == request_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if r is None:
        raise NvrError(Kind.NOT_FOUND, "export_not_found", f"no export request {request_id}")
    return r


def encryption_note(r: ExportRequest) -> str | None:
    """``encrypted to <type> key <fingerprint>`` for a request with a recipient key, else None."""
    if not r.recipient_key_fingerprint:
        return None
    return f"encrypted to {r.recipient_key_type} key {r.recipient_key_fingerprint}"


def event(r: ExportRequest, action: str, reason: str | None = None, **kw: Any) -> audit.Event:
    """An export step's audit event: the request, its window, purpose, case and destination; for an encrypted copy
    the reason starts with the recipient key's type and fingerprint (first, so clipping a long reason keeps it)."""
    note = encryption_note(r)
    if note is not None:
        reason = note if not reason else f"{note}; {reason}"
    return audit.Event(
        action,
        kw.pop("outcome", "ok"),
        window_start_us=r.window_start_us,
        window_end_us=r.window_end_us,
        object_id=f"export:{r.id}",
        purpose=r.purpose,
        case_ref=r.case_ref,
        destination=kw.pop("destination", r.destination),
        reason=reason,
        **kw,
    )


def _validate(s: Session, spec: ExportSpec, max_window_hours: int, now_us: int) -> list[str]:
    cameras = sorted(set(spec.cameras))
    if not cameras or len(cameras) > MAX_CAMERAS:
        raise NvrError(Kind.INVALID_ARGUMENT, "export_cameras_invalid", f"an export names 1 to {MAX_CAMERAS} cameras")
    for c in cameras:
        registry.validate_id(c)
    if spec.end_us <= spec.start_us:
        raise NvrError(Kind.INVALID_ARGUMENT, "window_invalid", "the window's end must be after its start")
    if spec.end_us - spec.start_us > max_window_hours * US_PER_HOUR:
        raise NvrError(
            Kind.INVALID_ARGUMENT,
            "window_too_long",
            f"one export covers at most {max_window_hours} h of footage; file one request per part",
        )
    if spec.start_us >= now_us:
        raise NvrError(Kind.INVALID_ARGUMENT, "window_invalid", "the window starts in the future")
    require_text(spec.purpose, "purpose_invalid", "purpose", 2000)
    require_text(spec.case_ref, "case_ref_invalid", "case reference")
    require_text(spec.legal_basis, "legal_basis_invalid", "legal basis", 2000)
    require_text(spec.recipient, "recipient_invalid", "recipient", 2000)
    require_text(spec.destination, "destination_invalid", "destination", 2000)
    if spec.recipient_public_key is not None:
        envelope.parse_recipient(spec.recipient_public_key)  # recipient_key_invalid
    for c in cameras:
        registry.get(s, c)  # camera_not_found
    if not any(segments_in(s, c, spec.start_us, spec.end_us) for c in cameras):
        raise NvrError(Kind.NOT_FOUND, "no_footage", "none of the cameras recorded anything in that window")
    return cameras


def _grant_covering(
    s: Session, p: Principal, cameras: list[str], start_us: int, end_us: int, now_us: int, grant_id: int | None
) -> Grant | None:
    """The requester's export grant covering every camera over the window, when every camera is unconditional.

    With ``grant_id`` the request names the grant it relies on: any way it falls short is an error naming why.
    Without, None means the request goes to the approvers."""
    unconditional = all(registry.get(s, c).share_class == "unconditional" for c in cameras)
    if grant_id is None:
        if not unconditional:
            return None
        try:
            found = {grants.authorize(s, p, c, "export", start_us, end_us, now_us).id for c in cameras}
        except NvrError:
            return None
        return s.get(Grant, min(found))
    if not unconditional:
        raise NvrError(
            Kind.FAILED_PRECONDITION,
            "export_needs_approval",
            "only footage of unconditional cameras is exported under a grant; leave out grant_id to ask approvers",
        )
    g = s.get(Grant, grant_id) if 0 < grant_id < 2**62 else None
    if g is None or g.user_id != p.user_id:
        raise NvrError(Kind.NOT_FOUND, "grant_not_found", f"you hold no grant {grant_id}")
    state = grants.effective_state(g, now_us)
    if state != "active" or now_us < g.valid_from_us:
        state = state if state != "active" else "not_yet_valid"
        raise _deny(f"grant_{state}", f"grant {g.id} is not in force ({state})")
    if "export" not in g.actions.split(","):
        raise _deny("action_not_granted", f"grant {g.id} does not allow export")
    named = set(grants.cameras_of(s, g.id))
    missing = [c for c in cameras if c not in named]
    if missing:
        raise _deny("outside_grant", f"grant {g.id} does not name camera(s) {', '.join(missing)}")
    if not grants.window_covers(g, start_us, end_us, now_us):
        raise _deny("outside_grant_window", f"the window is outside the footage window of grant {g.id}")
    return g


def create(
    s: Session,
    p: Principal,
    meta: audit.RequestMeta,
    spec: ExportSpec,
    max_window_hours: int,
    now_us: int,
    configured_suite: str | None = None,
) -> ExportRequest:
    """File an export request (``export.request``). ``configured_suite`` (setting ``crypto_suite``) decides which
    recipient key type is accepted before the archive has a signing key (:func:`check_recipient_suite`)."""
    if not p.can("exports.request"):
        raise _deny("role_forbidden", "only an officer may request an export")
    require_may_copy(p, "file an export request")
    cameras = _validate(s, spec, max_window_hours, now_us)
    for c in cameras:
        cam = registry.get(s, c)
        if cam.share_class == "non_shared" and cam.managing_unit != p.unit:
            raise _deny(
                "camera_not_shared",
                f"camera {c!r} is not shared outside its managing unit; only its own officers may export it",
            )
    g = _grant_covering(s, p, cameras, spec.start_us, spec.end_us, now_us, spec.grant_id)
    key = None if spec.recipient_public_key is None else envelope.parse_recipient(spec.recipient_public_key)
    if key is not None:
        check_recipient_suite(s, key, configured_suite)
    r = ExportRequest(
        requester_id=p.user_id,
        cameras=",".join(cameras),
        window_start_us=spec.start_us,
        window_end_us=spec.end_us,
        purpose=spec.purpose.strip(),
        case_ref=spec.case_ref.strip(),
        legal_basis=spec.legal_basis.strip(),
        recipient=spec.recipient.strip(),
        destination=spec.destination.strip(),
        recipient_key_pem=None if key is None else key.pem,
        recipient_key_type=None if key is None else key.key_type,
        recipient_key_fingerprint=None if key is None else key.fingerprint,
        route="grant" if g is not None else "approval",
        grant_id=g.id if g is not None else None,
        state="pending_cosign",
        created_us=now_us,
        updated_us=now_us,
    )
    s.add(r)
    s.flush()
    reason = f"cameras={r.cameras}; legal basis: {r.legal_basis}; recipient: {r.recipient}; route={r.route}"
    audit.record(s, now_us, p.actor, meta, event(r, "export.request", reason))
    return r


def may_see(p: Principal, r: ExportRequest, requester_unit: str | None) -> bool:
    if p.user_id in (r.requester_id, r.cosigner_id) or p.can("exports.oversee"):
        return True
    # Officers of the requester's unit see what waits for a co-signature.
    return r.state == "pending_cosign" and p.can("exports.cosign") and requester_unit == p.unit


def get_visible(s: Session, p: Principal, request_id: int) -> ExportRequest:
    r = s.get(ExportRequest, request_id) if 0 < request_id < 2**62 else None
    if r is None or not may_see(p, r, _unit_of(s, r.requester_id)):
        raise NvrError(Kind.NOT_FOUND, "export_not_found", f"no export request {request_id}")
    return r


def _unit_of(s: Session, user_id: int | None) -> str | None:
    return None if user_id is None else s.scalar(select(User.unit).where(User.id == user_id))


def list_requests(s: Session, p: Principal, state: str | None, now_us: int) -> list[ExportRequest]:
    q = select(ExportRequest).order_by(ExportRequest.id.desc())
    if not p.can("exports.oversee"):
        same_unit = select(User.id).where(User.unit == p.unit)
        q = q.where(
            or_(
                ExportRequest.requester_id == p.user_id,
                ExportRequest.cosigner_id == p.user_id,
                (ExportRequest.state == "pending_cosign") & ExportRequest.requester_id.in_(same_unit)
                if p.can("exports.cosign")
                else false(),  # what or_() coerces a plain False to (the same False_ singleton)
            )
        )
    if state in STATES and state != "expired":
        q = q.where(ExportRequest.state == state)
    rows = list(s.scalars(q.limit(1000)))
    if state == "expired":
        rows = [r for r in rows if effective_state(r, now_us, has_bundle(s, r.id)) == "expired"]
    return rows


def _require_state(r: ExportRequest, now_us: int, *states: str) -> None:
    state = effective_state(r, now_us, False)
    if state not in states:
        raise NvrError(
            Kind.FAILED_PRECONDITION,
            "export_state_invalid",
            f"export request {r.id} is {state}; this needs {' or '.join(states)}",
        )


def cosign(
    s: Session, p: Principal, meta: audit.RequestMeta, request_id: int, now_us: int, approval_valid_days: int
) -> ExportRequest:
    """A second officer of the requester's unit co-signs (``export.cosign``)."""
    r = get_visible(s, p, request_id)
    if not p.can("exports.cosign"):
        raise _deny("role_forbidden", "only an officer may co-sign an export request")
    require_may_copy(p, "co-sign an export request")
    r = locked_request(s, r.id)
    if p.user_id == r.requester_id:
        raise _deny("cosign_self", "the requester cannot co-sign their own request; a second officer must")
    if _unit_of(s, r.requester_id) != p.unit:
        raise _deny("cosign_unit_mismatch", "only an officer of the requester's unit may co-sign")
    _require_state(r, now_us, "pending_cosign")
    r.cosigner_id, r.cosigned_us, r.updated_us = p.user_id, now_us, now_us
    if r.route == "grant":
        r.state, r.decided_us, r.approved_until_us = "approved", now_us, now_us + approval_valid_days * US_PER_DAY
        r.decision_reason = f"covered by export grant {r.grant_id}"
    else:
        r.state = "pending_approval"
    s.flush()
    audit.record(s, now_us, p.actor, meta, event(r, "export.cosign", f"state={r.state}"))
    return r


def owning_units(s: Session, r: ExportRequest) -> list[str]:
    return sorted({registry.get(s, c).managing_unit for c in cameras_of(r)})


def decisions(s: Session, r: ExportRequest) -> list[ExportApproval]:
    return list(s.scalars(select(ExportApproval).where(ExportApproval.request_id == r.id).order_by("decided_us")))


def decide(
    s: Session,
    p: Principal,
    meta: audit.RequestMeta,
    request_id: int,
    approve: bool,
    reason: str | None,
    now_us: int,
    valid_days: int,
) -> ExportRequest:
    """Record one owning unit's decision (the approver's unit); the request follows from all of them
    (``export.approve`` / ``export.reject``)."""
    r = get_visible(s, p, request_id)
    if not p.can("exports.approve"):
        raise _deny("role_forbidden", "only an approver may decide on an export request")
    text = require_text(reason or "", "reason_invalid", "a decision's reason", 2000)
    r = locked_request(s, r.id)
    if r.route == "grant":
        raise NvrError(Kind.FAILED_PRECONDITION, "export_state_invalid", "this request is covered by a grant")
    _require_state(r, now_us, "pending_approval")
    if p.user_id in (r.requester_id, r.cosigner_id):
        raise _deny("approval_conflict", "a person who filed or co-signed a request cannot approve it")
    units = owning_units(s, r)
    if p.unit not in units:
        raise _deny("approval_unit_mismatch", "only an approver of a unit that manages one of the cameras may decide")
    if s.get(ExportApproval, (r.id, p.unit)) is not None:
        raise NvrError(Kind.CONFLICT, "already_decided", f"unit {p.unit!r} has already decided on request {r.id}")
    d = ExportApproval(
        request_id=r.id,
        unit=p.unit,
        approver_id=p.user_id,
        decision="approved" if approve else "rejected",
        reason=text,
        decided_us=now_us,
    )
    s.add(d)
    s.flush()
    r.updated_us = now_us
    if not approve:
        r.state, r.decided_us, r.decision_reason = "rejected", now_us, f"rejected by {p.unit}: {text}"
    elif {a.unit for a in decisions(s, r) if a.decision == "approved"} >= set(units):
        r.state, r.decided_us, r.approved_until_us = "approved", now_us, now_us + valid_days * US_PER_DAY
        r.decision_reason = "approved by " + ", ".join(units)
    s.flush()
    action = "export.approve" if approve else "export.reject"
    audit.record(s, now_us, p.actor, meta, event(r, action, f"unit {d.unit}: {d.reason}; state={r.state}"))
    return r


def withdraw(s: Session, p: Principal, meta: audit.RequestMeta, request_id: int, now_us: int) -> ExportRequest:
    """The requester withdraws the request, until a bundle is being made or exists (``export.withdraw``)."""
    r = get_visible(s, p, request_id)
    if p.user_id != r.requester_id:
        raise _deny("role_forbidden", "only the requester may withdraw an export request")
    r = locked_request(s, r.id)
    _require_state(r, now_us, "pending_cosign", "pending_approval", "approved", "expired")
    if active_job(s, r.id) is not None:
        raise NvrError(
            Kind.FAILED_PRECONDITION, "export_in_progress", "a bundle is being made or exists; cancel or let it expire"
        )
    r.state, r.updated_us = "withdrawn", now_us
    s.flush()
    audit.record(s, now_us, p.actor, meta, event(r, "export.withdraw"))
    return r


def active_job(s: Session, request_id: int) -> ExportJob | None:
    """The job that is queued, running, or whose bundle exists; at most one per request."""
    return s.scalar(
        select(ExportJob)
        .where(ExportJob.request_id == request_id, ExportJob.state.in_(("queued", "running", "done")))
        .order_by(ExportJob.id.desc())
        .limit(1)
    )


def has_bundle(s: Session, request_id: int) -> bool:
    return (
        s.scalar(
            select(ExportJob.id)
            .where(ExportJob.request_id == request_id, ExportJob.state.in_(("done", "deleted")))
            .limit(1)
        )
        is not None
    )


def latest_job(s: Session, request_id: int) -> ExportJob | None:
    return s.scalar(select(ExportJob).where(ExportJob.request_id == request_id).order_by(ExportJob.id.desc()).limit(1))


def check_still_covered(s: Session, r: ExportRequest, requester: Principal, now_us: int) -> None:
    """On the grant route the grant must still be in force when the bundle is made."""
    if r.route == "grant":
        for c in cameras_of(r):
            grants.authorize(s, requester, c, "export", r.window_start_us, r.window_end_us, now_us)


def person(s: Session, user_id: int | None) -> dict[str, Any] | None:
    u = s.get(User, user_id) if user_id is not None else None
    if u is None:
        return None
    return {
        "id": u.id,
        "username": u.username,
        "full_name": u.full_name,
        "staff_number": u.staff_number,
        "unit": u.unit,
    }


def job_view(j: ExportJob | None) -> dict[str, Any] | None:
    if j is None:
        return None
    pct = 100.0 if j.state == "done" else (100.0 * j.bytes_done / j.bytes_total if j.bytes_total else 0.0)
    return {
        "id": j.id,
        "state": j.state,
        "percent": round(min(pct, 100.0), 1),
        "bytes_done": j.bytes_done,
        "bytes_total": j.bytes_total,
        "created": iso(j.created_us),
        "started": iso(j.started_us),
        "finished": iso(j.finished_us),
        "error": None if j.error_code is None else {"code": j.error_code, "message": j.error_message},
        "bundle_bytes": j.bundle_bytes,
        "bundle_sha256": j.bundle_sha256,
        "manifest_sha256": j.manifest_sha256,
        "key_id": j.key_id,
        "downloads": j.downloads,
        "expires": iso(j.expires_us),
        "deleted": iso(j.deleted_us),
        "cancel_requested": j.cancel_requested,
    }


def matter(s: Session, r: ExportRequest) -> dict[str, Any]:
    """What the request is about and who asked: the same fields in the API's view and in a bundle's manifest."""
    return {
        "window": {
            "start": iso(r.window_start_us),
            "end": iso(r.window_end_us),
            "start_us": r.window_start_us,
            "end_us": r.window_end_us,
        },
        "purpose": r.purpose,
        "case_ref": r.case_ref,
        "legal_basis": r.legal_basis,
        "recipient": r.recipient,
        "destination": r.destination,
        "route": r.route,
        "grant_id": r.grant_id,
        "requester": person(s, r.requester_id),
        "cosigner": person(s, r.cosigner_id),
    }


def view(s: Session, r: ExportRequest, now_us: int) -> dict[str, Any]:
    return {
        "id": r.id,
        "state": effective_state(r, now_us, has_bundle(s, r.id)),
        "cameras": cameras_of(r),
        **matter(s, r),
        "cosigned": iso(r.cosigned_us),
        "owning_units": owning_units(s, r),
        "decisions": [
            {
                "unit": d.unit,
                "approver": person(s, d.approver_id),
                "decision": d.decision,
                "reason": d.reason,
                "decided": iso(d.decided_us),
            }
            for d in decisions(s, r)
        ],
        "decision_reason": r.decision_reason,
        "encryption": encryption_view(r),
        "approved_until": iso(r.approved_until_us),
        "created": iso(r.created_us),
        "job": job_view(latest_job(s, r.id)),
    }


# --- encrypted copies (integrity.envelope) ---------------------------------------------------------------------
def encryption_view(r: ExportRequest) -> dict[str, Any] | None:
    """None for a bundle in the clear; else the recipient key's type and fingerprint, and the envelope's cipher."""
    if not r.recipient_key_fingerprint or not r.recipient_key_type:
        return None
    return {
        "recipient_key_type": r.recipient_key_type,
        "recipient_key_fingerprint": r.recipient_key_fingerprint,
        "cipher": envelope.CIPHER_OF.get(r.recipient_key_type),
        "format": f"{envelope.FORMAT}/{envelope.VERSION}",
    }


def check_recipient_suite(s: Session, key: envelope.Recipient, configured_suite: str | None) -> None:
    """An export is encrypted to the recipient type of the archive's suite (integrity.suites: X25519 for
    ``ed25519-sha256``, SM2 for ``sm2-sm3``), the suite of the active signing key, or the configured one before the
    first key is made: 422 ``recipient_key_suite_mismatch`` otherwise, so an SM2 archive never sends AES copies."""
    active = keys.active_key(s)
    suite = suites.get(active.suite if active is not None else configured_suite or suites.DEFAULT_SUITE)
    if key.key_type != suite.recipient:
        raise NvrError(
            Kind.INVALID_ARGUMENT,
            "recipient_key_suite_mismatch",
            f"this archive's crypto suite is {suite.name}: exports are encrypted to {suite.recipient.upper()} keys "
            f"({suite.cipher}); the key given is an {key.key_type.upper()} key",
        )


def seal_for_recipient(db: Database, job_id: int, result: Any, cancelled: Callable[[], bool] | None = None) -> Any:
    """The export job's last step (api.export_jobs): when the job's request names a recipient key, encrypt the
    finished ZIP (``result``, a storage.bundle.BundleResult) into ``<name>.nvrenc`` and delete the ZIP; the result
    returned then describes the envelope (path, bytes, SHA-256), which is what is published and served. Without a
    recipient key, ``result`` unchanged. The plain ZIP is removed whatever happens; ``cancelled`` is polled per
    chunk (it also refreshes the job's heartbeat, so a long encryption is not taken for a dead process)."""
    with db.session() as s:
        job = s.get(ExportJob, job_id)
        r = s.get(ExportRequest, job.request_id) if job is not None else None
        pem = None if r is None else r.recipient_key_pem
    if pem is None:
        return result
    plain = Path(result.path)
    try:
        recipient = envelope.parse_recipient(pem)

        def tick(_done: int) -> None:
            if cancelled is not None and cancelled():
                raise NvrError(Kind.FAILED_PRECONDITION, "export_cancelled", "the export was cancelled")

        sealed = envelope.seal_envelope(plain, plain.with_name(plain.name + envelope.SUFFIX), recipient, progress=tick)
    finally:
        plain.unlink(missing_ok=True)
    return dataclasses.replace(result, path=sealed.path, bytes=sealed.bytes, sha256=sealed.sha256)


def remove_unpublished(exports_dir: Path, job_id: int) -> None:
    """What a failed or interrupted job may have left besides its partial ZIP: the finished plain ZIP (a process
    that died while encrypting it) and the envelope's temporary file. Only for jobs that were never published."""
    for p in [*exports_dir.glob(f"export-*-{job_id}.zip"), *exports_dir.glob(f".export-*-{job_id}.zip.nvrenc.*")]:
        p.unlink(missing_ok=True)
