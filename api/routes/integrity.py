"""Integrity over HTTP: the server's public signing keys (so any user can fetch the key of an old bundle; the
fingerprint to trust still comes out of band) and the open integrity findings behind the ``integrity_mismatch``
alarm (admins and auditors)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from pydantic import Field

from api import audit
from api.context import Ctx, requires
from api.routes.models import (
    CheckpointChain,
    CheckpointEntry,
    FindingList,
    FindingResolved,
    FindingView,
    KeyList,
    KeyView,
)
from api.routes.schemas import Body
from integrity import keys
from integrity.findings import view as findings_view
from integrity.verify_archive import open_findings
from nvr.clock import iso

router = APIRouter(tags=["integrity"])


@router.get("/keys")
def list_keys(ctx: Annotated[Ctx, Depends(requires("keys.list"))]) -> KeyList:
    """Every signing key the server has used, oldest first, with its public key (PEM) and fingerprint."""
    with ctx.db.session() as s:
        return KeyList(
            keys=[
                KeyView.model_validate(
                    {
                        "key_id": k.key_id,
                        "suite": k.suite,
                        "fingerprint": k.fingerprint,
                        "public_key_pem": k.public_key_pem,
                        "created": iso(k.created_us),
                        "retired": iso(k.retired_us),
                        "active": k.retired_us is None,
                    }
                )
                for k in keys.public_keys(s)
            ]
        )


@router.get("/integrity/findings")
def findings(
    ctx: Annotated[Ctx, Depends(requires("integrity.findings", "integrity.read"))],
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> FindingList:
    """Unresolved problems the scrubber or ``nvr verify --record`` found: kind, camera, seq, footage time."""
    with ctx.db.session() as s:
        rows = open_findings(s)[:limit]
        ctx.record(s, audit.Event("integrity.findings", "allowed", reason=f"{len(rows)} open finding(s)"))
        return FindingList(findings=[FindingView(**findings_view(f)) for f in rows])


@router.get("/checkpoints")
def checkpoint_chain(
    ctx: Annotated[Ctx, Depends(requires("checkpoints.read", "integrity.read"))],
    after_seq: Annotated[int, Query(ge=0, description="Only checkpoints after this seq (for incremental copies).")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> CheckpointChain:
    """The signed checkpoint chain, oldest first, each with its exact body and signature, and the pinned key log
    (every key's record, countersigned at each rotation): a witness copy an auditor keeps and later hands to
    ``nvr verify --against FILE``. Page with ``after_seq`` (the last ``seq`` received); ``more`` says whether to."""
    from sqlalchemy import select

    from integrity import keylog, witness
    from nvr.models import Checkpoint

    with ctx.db.session() as s:
        rows = list(
            s.scalars(
                select(Checkpoint)
                .where(Checkpoint.seq.is_not(None), Checkpoint.seq > after_seq)
                .order_by(Checkpoint.seq)
                .limit(limit + 1)
            )
        )
        more = len(rows) > limit
        rows = rows[:limit]
        ctx.record(
            s,
            audit.Event(
                "checkpoints.read",
                "allowed",
                reason=f"{len(rows)} checkpoint(s) after seq {after_seq}",
            ),
        )
        return CheckpointChain(
            key_log=keylog.read_lines(ctx.services.settings.keys_dir),
            checkpoints=[CheckpointEntry(**witness.entry(r)) for r in rows],
            more=more,
        )


class ResolveBody(Body):
    note: str = Field(min_length=1, max_length=2000, description="What was found and done.")


@router.post("/integrity/findings/{finding_id}/resolve")
def resolve_finding(
    ctx: Annotated[Ctx, Depends(requires("integrity.finding.resolve", "integrity.resolve"))],
    finding_id: Annotated[int, Path(ge=1)],
    body: ResolveBody,
) -> FindingResolved:
    """Resolve one open finding with a note (auditors). Automatic checks never resolve findings; this is the only
    way the ``integrity_mismatch`` alarm ends, and it is audited (``integrity.finding.resolve``)."""
    from integrity import findings

    with ctx.db.session() as s:
        f = findings.resolve(s, finding_id, body.note, actor=ctx.actor, meta=ctx.meta, now_us=ctx.now_us)
        return FindingResolved(
            id=f.id,
            kind=f.kind,
            subject=f.subject,
            resolved=iso(f.resolved_us),
            resolved_by=f.resolved_by,
            note=f.resolution_note,
        )
