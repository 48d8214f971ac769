"""The audit trail, for auditors: filtered reads as JSON or CSV, and chain verification."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response

from api import audit
from api.context import Ctx, requires
from nvr.clock import parse_iso

router = APIRouter(tags=["audit"])


@router.get(
    "/audit",
    response_model=None,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "JSON, or CSV."}},
)
def read_audit(
    ctx: Annotated[Ctx, Depends(requires("audit.read", "audit.read"))],
    since: Annotated[str | None, Query(max_length=64)] = None,
    until: Annotated[str | None, Query(max_length=64)] = None,
    actor_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    camera_id: Annotated[str | None, Query(max_length=64)] = None,
    outcome: Annotated[str | None, Query(max_length=20)] = None,
    after_seq: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    format: Annotated[Literal["json", "csv"], Query()] = "json",
) -> Any:
    """Events in sequence order. Page with ``after_seq`` (the last ``seq`` you received). Reading is audited too."""
    f = audit.AuditFilter(
        since_us=parse_iso(since) if since else None,
        until_us=parse_iso(until) if until else None,
        actor_id=actor_id,
        action=action,
        camera_id=camera_id,
        outcome=outcome,
        after_seq=after_seq,
        limit=limit,
    )
    with ctx.db.session() as s:
        events = audit.query(s, f)
        ctx.record(
            s,
            audit.Event(
                "audit.read",
                "allowed",
                camera_id=camera_id,
                window_start_us=f.since_us,
                window_end_us=f.until_us,
                reason=f"{len(events)} event(s) as {format}",
            ),
        )
    if format == "csv":
        return Response(
            audit.to_csv(events),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="audit.csv"'},
        )
    return {"events": [audit.as_dict(e) for e in events], "next_after_seq": events[-1].seq if events else after_seq}


@router.get("/audit/verify")
def verify_audit(ctx: Annotated[Ctx, Depends(requires("audit.verify", "audit.read"))]) -> dict[str, Any]:
    """Recompute the whole chain; names the first event that was edited, removed or reordered."""
    with ctx.db.session() as s:
        checked, problem = audit.verify(s)
    with ctx.db.session() as s:
        ctx.record(s, audit.Event("audit.verify", "ok" if problem is None else "failed", reason=str(problem or "")))
    return {
        "ok": problem is None,
        "checked": checked,
        "problem": None if problem is None else {"seq": problem.seq, "kind": problem.kind, "detail": problem.detail},
    }
