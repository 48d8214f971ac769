"""Resolving an integrity finding: only a person does it, with a note, and it is audited.

Automatic checks (the scrubber, ``nvr verify --record``, playback) open findings and may mark one *intact again*
(``intact_us``) when its subject checks out later — a file restored from a copy, a volume mounted again — but they
never close one: a tampered archive is never "repaired" silently. The ``integrity_mismatch`` alarm stays until an
auditor (API) or an operator at the console (CLI) resolves each finding with a note saying what was found and done.
The same function serves both; it writes one ``integrity.finding.resolve`` audit event in the same transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from integrity import audit_log
from nvr.clock import iso
from nvr.errors import Kind, NvrError
from nvr.models import IntegrityFinding

NOTE_MAX = 2000


def view(f: IntegrityFinding) -> dict[str, Any]:
    """A finding as the API and the CLI show it."""
    return {
        "id": f.id,
        "kind": f.kind,
        "camera_id": f.camera_id,
        "seq": f.seq,
        "at": iso(f.at_us),
        "subject": f.subject,
        "detail": f.detail,
        "source": f.source,
        "found": iso(f.found_us),
        "intact_again": iso(f.intact_us),
    }


def resolve(
    session: Session,
    finding_id: int,
    note: str,
    *,
    actor: audit_log.Actor,
    meta: audit_log.RequestMeta,
    now_us: int,
) -> IntegrityFinding:
    """Resolve one open finding with ``note``. ``note_required`` (422) without a note, ``finding_not_found`` (404),
    ``finding_resolved`` (409) when it was already resolved (also when two people race: one wins)."""
    text = (note or "").strip()
    if not text:
        raise NvrError(
            Kind.INVALID_ARGUMENT, "note_required", "say what was found and done: a finding is resolved with a note"
        )
    if len(text) > NOTE_MAX:
        raise NvrError(Kind.INVALID_ARGUMENT, "note_invalid", f"the note is longer than {NOTE_MAX} characters")
    f = session.get(IntegrityFinding, finding_id) if 0 < finding_id < 2**62 else None  # beyond BIGINT: none
    if f is None:
        raise NvrError(Kind.NOT_FOUND, "finding_not_found", f"no integrity finding {finding_id}")
    who = actor.name or (f"user:{actor.id}" if actor.id is not None else "unknown")
    done = session.execute(  # type: ignore[attr-defined]  # an UPDATE's CursorResult has rowcount
        update(IntegrityFinding)
        .where(IntegrityFinding.id == finding_id, IntegrityFinding.resolved_us.is_(None))
        .values(resolved_us=now_us, resolved_by=who, resolution_note=text)
    ).rowcount
    if not done:
        raise NvrError(Kind.CONFLICT, "finding_resolved", f"integrity finding {finding_id} is already resolved")
    session.refresh(f)
    audit_log.record(
        session,
        now_us,
        actor,
        meta,
        audit_log.Event(
            "integrity.finding.resolve",
            "ok",
            camera_id=f.camera_id,
            object_id=f"finding:{f.id}",
            reason=f"{f.kind} {f.subject}: {text}",
        ),
    )
    return f
