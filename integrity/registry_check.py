"""The registry as evidence: does every camera record and retention policy still match what was signed and audited?

Every change to a camera record or a retention policy writes one audit event whose ``reason`` ends with
``; record sha256 <digest>`` (:func:`with_digest`), the record's digest (integrity.records) right after the change.
Each signed checkpoint carries ``"registry": integrity.records.registry_digests(...)`` beside its audit head.
:func:`check_registry` compares every current record with both and names each one that disagrees
(``registry_mismatch``):

- **the checkpoint**: a record's digest must be the one the newest checkpoint signed, unless an audited change
  (an event with a higher ``seq`` than the checkpoint's audit head) followed it. A record the checkpoint does not
  have must have been created after it (its creation event has a higher ``seq``); a camera the checkpoint has
  must still exist, and a policy it has must exist or have an audited deletion after it.
- **the audit history**: a record's digest must be the one its newest audited change names. A record differing
  from it was edited outside the service functions (api.cameras, retention.policies). Records whose history names
  no digest at all (made before registry changes were audited so) are checked against the checkpoint only.

Bounded reads: a camera's newest audited change is one ``ix_audit_camera`` look-up (the newest event of the
camera with a registry action). Policy events carry no camera, so a policy's newest change is looked up at its
``updated_us``: the service stamps the record and its event with the same time (``ix_audit_at``). A policy whose
creation was audited with a digest but whose ``updated_us`` names no audited change had that field edited too.
Deletions are looked for among the events after the checkpoint only, and only when a signed policy is gone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from integrity.problems import Problem
from integrity.records import camera_digest, policy_digest
from nvr.clock import iso
from nvr.models import AuditEvent, Camera, RetentionPolicy

KIND = "registry_mismatch"
DIGEST_NOTE = "; record sha256 "
MAX_REASON = 2000
"""integrity.audit_log clips a reason to this; :func:`with_digest` shortens the text so the digest survives."""
CAMERA_ACTIONS = ("camera.create", "camera.update", "camera.state", "retention.policy.assign")
"""Events changing a camera record (``camera_id`` set); each names the camera's digest after the change."""
POLICY_ACTIONS = ("retention.policy.create", "retention.policy.update", "retention.policy.default")
"""Events changing a policy (``object_id`` ``policy:<name>``); each names the policy's digest after the change.
``retention.policy.default`` also names the digest of the previous default, whose ``is_default`` it cleared."""
POLICY_DELETE = "retention.policy.delete"
_DIGEST = re.compile(r"; record sha256 ([0-9a-f]{64})\Z")
_PREVIOUS_DEFAULT = re.compile(r"\Adefault policy (\S+) → (\S+); (\S+) record sha256 ([0-9a-f]{64}); ")
_DELETED = re.compile(r"; policy id (\d+) deleted")


def with_digest(reason: str | None, digest: str) -> str:
    """``reason`` + ``; record sha256 <digest>``, the text shortened so the whole fits an audit reason."""
    note = DIGEST_NOTE + digest
    text = reason or ""
    room = MAX_REASON - len(note)
    if len(text) > room:
        text = text[: room - 1] + "…"
    return text + note


def digest_in(reason: str | None) -> str | None:
    """The digest a reason ends with (:func:`with_digest`), or None."""
    m = _DIGEST.search(reason or "")
    return m.group(1) if m else None


def previous_default_note(name: str, digest: str) -> str:
    """What ``retention.policy.default`` adds for the previous default: ``; <name> record sha256 <digest>``."""
    return f"; {name} record sha256 {digest}"


def deleted_note(policy_id: int, digest: str) -> str:
    """What ``retention.policy.delete`` adds (there is no record after it): its id and its last digest."""
    return f"; policy id {policy_id} deleted (its record was sha256 {digest})"


@dataclass(frozen=True)
class Audited:
    """The newest audit event naming a record's digest."""

    seq: int
    action: str
    digest: str


@dataclass(frozen=True)
class _Signed:
    name: str
    seq: int
    cameras: Mapping[str, Any]
    policies: Mapping[str, Any]


def _signed(body: Mapping[str, Any] | None, name: str | None) -> _Signed | None:
    """The checkpoint's registry section, or None when there is no checkpoint or it carries none."""
    if not body or not isinstance(body.get("registry"), Mapping):
        return None
    reg = body["registry"]
    given = body.get("audit")
    audit: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
    created = body.get("created_us")
    label = name or ("the newest checkpoint" + (f" (signed {iso(created)})" if isinstance(created, int) else ""))
    cams = reg.get("cameras")
    pols = reg.get("policies")
    return _Signed(
        label,
        int(audit.get("seq", 0) or 0),
        cams if isinstance(cams, Mapping) else {},
        pols if isinstance(pols, Mapping) else {},
    )


def _short(digest: object) -> str:
    return f"{str(digest)[:16]}…"


# --- audited digests ---------------------------------------------------------------------------------------------
_RECENT = 64
"""Changes of one camera read, newest first by time, to find the newest by sequence number."""


def latest_camera_change(session: Session, camera_id: str) -> Audited | None:
    """The newest event (by ``seq``) naming the camera's digest: a short backward range of ``ix_audit_camera``.

    Concurrent changes take their time before they wait for the camera's row lock, so ``at_us`` may run slightly out
    of ``seq`` order; the newest :data:`_RECENT` by time are read and the highest ``seq`` among them wins."""
    rows = session.execute(
        select(AuditEvent.seq, AuditEvent.action, AuditEvent.reason)
        .where(
            AuditEvent.camera_id == camera_id,
            AuditEvent.action.in_(CAMERA_ACTIONS),
            AuditEvent.outcome == "ok",
            AuditEvent.reason.contains(DIGEST_NOTE),
        )
        .order_by(AuditEvent.at_us.desc(), AuditEvent.seq.desc())
        .limit(_RECENT)
    ).all()
    row = max(rows, key=lambda r: r.seq, default=None)
    digest = digest_in(row.reason) if row is not None else None
    return Audited(int(row.seq), row.action, digest) if row is not None and digest is not None else None


def flag_if_edited(session: Session, cam: Camera, now_us: int) -> bool:
    """Before an audited change to ``cam``: if its record no longer has the digest its newest audited change named,
    someone edited it outside the service functions. Open a ``registry_mismatch`` finding now, in the change's
    transaction, so the legitimate change about to be audited cannot cover the edit. Returns True when it did."""
    return _flag(session, latest_camera_change(session, cam.id), camera_digest(cam), cam.id, f"camera {cam.id}", now_us)


def flag_policy_if_edited(session: Session, policy: RetentionPolicy, now_us: int) -> bool:
    """:func:`flag_if_edited` for a retention policy, before an audited change to it."""
    return _flag(
        session, latest_policy_change(session, policy), policy_digest(policy), None, f"policy {policy.id}", now_us
    )


def _flag(session: Session, latest: Audited | None, now: str, camera_id: str | None, subject: str, now_us: int) -> bool:
    from integrity.verify_archive import open_finding

    if latest is None or latest.digest == now:
        return False
    detail = (
        f"its record had sha256 {_short(now)} when it was next changed, but audit event {latest.seq} "
        f"({latest.action}) named sha256 {_short(latest.digest)}: it was edited in the database in between"
    )
    open_finding(session, Problem("registry_mismatch", camera_id, None, None, subject, detail), "registry", now_us)
    return True


def _camera_created_seq(session: Session, camera_id: str) -> int | None:
    return session.scalar(
        select(AuditEvent.seq)
        .where(AuditEvent.camera_id == camera_id, AuditEvent.action == "camera.create", AuditEvent.outcome == "ok")
        .order_by(AuditEvent.at_us.desc(), AuditEvent.seq.desc())
        .limit(1)
    )


def _policy_events_at(session: Session, at_us: int) -> list[Any]:
    return list(
        session.execute(
            select(AuditEvent.seq, AuditEvent.action, AuditEvent.object_id, AuditEvent.reason)
            .where(AuditEvent.at_us == at_us, AuditEvent.action.in_(POLICY_ACTIONS), AuditEvent.outcome == "ok")
            .order_by(AuditEvent.seq)
        )
    )


def _policy_digest_of(ev: Any, name: str) -> str | None:
    """The digest ``ev`` names for policy ``name``: its own, or (a default change) the previous default's."""
    if ev.object_id == f"policy:{name}":
        return digest_in(ev.reason)
    m = _PREVIOUS_DEFAULT.match(ev.reason or "") if ev.action == "retention.policy.default" else None
    if m and m.group(1) == m.group(3) == name:
        return m.group(4)
    return None


def latest_policy_change(session: Session, policy: RetentionPolicy) -> Audited | None:
    """The newest event at the policy's ``updated_us`` naming its digest (the service stamps both alike)."""
    found = None
    for ev in _policy_events_at(session, policy.updated_us):
        digest = _policy_digest_of(ev, policy.name)
        if digest is not None:
            found = Audited(int(ev.seq), ev.action, digest)
    return found


def _policy_created(session: Session, policy: RetentionPolicy) -> tuple[int, bool] | None:
    """The creation event at the policy's ``created_us``: (seq, whether it names a digest), or None."""
    found = None
    for ev in _policy_events_at(session, policy.created_us):
        if ev.action == "retention.policy.create" and ev.object_id == f"policy:{policy.name}":
            found = (int(ev.seq), digest_in(ev.reason) is not None)
    return found


def _deleted_since(session: Session, seq: int) -> set[str]:
    """Ids of the policies whose deletion was audited after audit event ``seq`` (a primary-key range)."""
    reasons = session.scalars(
        select(AuditEvent.reason).where(
            AuditEvent.seq > seq, AuditEvent.action == POLICY_DELETE, AuditEvent.outcome == "ok"
        )
    )
    return {m.group(1) for r in reasons if (m := _DELETED.search(r or ""))}


# --- the checks ----------------------------------------------------------------------------------------------------
def _disagreement(what: str, now: str, parts: list[str]) -> str | None:
    return f"{what} sha256 {_short(now)} differs from " + "; and from ".join(parts) if parts else None


def _against_checkpoint(signed: object, now: str, latest: Audited | None, cp: _Signed) -> str | None:
    if signed == now or (latest is not None and latest.seq > cp.seq):
        return None  # as signed, or changed (audited) since: the audit history decides
    return f"{cp.name}, which signed sha256 {_short(signed)} and no audited change follows"


def _against_history(now: str, latest: Audited | None) -> str | None:
    if latest is None or latest.digest == now:
        return None
    return f"its audit history: audit event {latest.seq} ({latest.action}) names sha256 {_short(latest.digest)}"


def _camera_problem(session: Session, cam: Camera, cp: _Signed | None) -> str | None:
    now = camera_digest(cam)
    latest = latest_camera_change(session, cam.id)
    parts = []
    if cp is not None:
        signed = cp.cameras.get(cam.id)
        if signed is None:
            created = _camera_created_seq(session, cam.id)
            if created is None or created <= cp.seq:
                parts.append(
                    f"{cp.name}, which has no such camera and no camera.create event after audit event {cp.seq}"
                )
        elif (why := _against_checkpoint(signed, now, latest, cp)) is not None:
            parts.append(why)
    if (why := _against_history(now, latest)) is not None:
        parts.append(why)
    return _disagreement("the record", now, parts)


def _policy_problem(session: Session, p: RetentionPolicy, cp: _Signed | None) -> str | None:
    now = policy_digest(p)
    latest = latest_policy_change(session, p)
    signed = cp.policies.get(str(p.id)) if cp is not None else None
    created = _policy_created(session, p) if latest is None or (cp is not None and signed is None) else None
    parts = []
    if cp is not None:
        if signed is None:
            if created is None or created[0] <= cp.seq:
                parts.append(
                    f"{cp.name}, which has no such policy and no retention.policy.create event after audit event "
                    f"{cp.seq}"
                )
        elif (why := _against_checkpoint(signed, now, latest, cp)) is not None:
            parts.append(why)
    if (why := _against_history(now, latest)) is not None:
        parts.append(why)
    elif latest is None and created is not None and created[1]:
        parts.append(
            f"its audit history: its creation (audit event {created[0]}) names a digest, but no audited change is "
            f"at its updated time {iso(p.updated_us)} (that field was edited too)"
        )
    return _disagreement(f"policy {p.name!r}", now, parts)


def check_registry(
    session: Session, newest_checkpoint_body: Mapping[str, Any] | None, *, checkpoint_name: str | None = None
) -> list[Problem]:
    """Every camera record and retention policy that differs from the newest checkpoint's ``registry`` section or
    from its own audit history (see the module docstring): one ``registry_mismatch`` per record, subject
    ``camera <id>`` (with ``camera_id``) or ``policy <id>``, ``seq`` and ``at_us`` None. ``checkpoint_name`` names
    the checkpoint in the details (default "the newest checkpoint (signed <time>)"). Read-only. A record found
    differing is read again before it is reported: a change may have been committed between two reads."""
    cp = _signed(newest_checkpoint_body, checkpoint_name)
    problems: list[Problem] = []
    cameras = list(session.scalars(select(Camera).order_by(Camera.id)))
    for cam in cameras:
        if _camera_problem(session, cam, cp) is None:
            continue
        again = session.get(Camera, cam.id, populate_existing=True)
        if again is not None and (detail := _camera_problem(session, again, cp)) is not None:
            problems.append(Problem(KIND, cam.id, None, None, f"camera {cam.id}", detail))
    policies = list(session.scalars(select(RetentionPolicy).order_by(RetentionPolicy.id)))
    for p in policies:
        if _policy_problem(session, p, cp) is None:
            continue
        again_p = session.get(RetentionPolicy, p.id, populate_existing=True)
        if again_p is not None and (detail := _policy_problem(session, again_p, cp)) is not None:
            problems.append(Problem(KIND, None, None, None, f"policy {p.id}", detail))
    if cp is None:
        return problems
    # Cameras are never deleted (decommissioning keeps the record); a policy may be, with an audited deletion.
    have = {c.id for c in cameras}
    for cam_id in sorted(set(cp.cameras) - have):
        detail = f"{cp.name} signed sha256 {_short(cp.cameras[cam_id])} for it; the registry has no such camera"
        problems.append(Problem(KIND, cam_id, None, None, f"camera {cam_id}", detail))
    gone = sorted(set(cp.policies) - {str(p.id) for p in policies}, key=lambda i: (len(i), i))
    deleted = _deleted_since(session, cp.seq) if gone else set()
    for pid in gone:
        if pid not in deleted:
            detail = (
                f"{cp.name} signed sha256 {_short(cp.policies[pid])} for it; there is no such policy and no audited "
                f"deletion after audit event {cp.seq}"
            )
            problems.append(Problem(KIND, None, None, None, f"policy {pid}", detail))
    return problems
