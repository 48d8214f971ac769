"""Abnormal-use alerts over HTTP: list and read (approvers, auditors, admins), review (approvers, never the alert's
own user). The rules, the suspension and the review live in :mod:`api.alerts`; this module parses and shapes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from api import alerts
from api.context import Ctx, requires
from api.routes.schemas import Body

router = APIRouter(tags=["alerts"])


class ReviewBody(Body):
    decision: Annotated[str, Field(max_length=20, description="'restore' or 'uphold'")]
    note: Annotated[str, Field(max_length=4000, description="Why (1 to 2000 characters; audited).")]


class AlertPerson(BaseModel):
    id: int
    username: str | None
    full_name: str | None
    unit: str | None


class AlertView(BaseModel):
    id: int
    rule: str
    state: str = Field(description="open, restored or upheld")
    user: AlertPerson | None
    raised: str | None
    detail: str
    suspends: bool = Field(description="The rule is in alert_suspend_rules: its alert suspends the user's grants.")
    suspended_grants: list[int] = Field(description="The grants this alert suspended (or was handed).")
    reviewed_by: AlertPerson | None
    reviewed: str | None
    review_note: str | None


class AlertList(BaseModel):
    alerts: list[AlertView]


class ReviewResult(BaseModel):
    alert: AlertView
    resumed_grants: list[int] = Field(description="Grants this review made active again.")
    still_suspended: list[int] = Field(description="Grants the alert held that stay suspended.")
    held_by_alert: int | None = Field(description="Another open alert of the user that now holds them, if any.")


def _one(ctx: Ctx, s: Any, a: Any) -> dict[str, Any]:
    return alerts.view(s, a, ctx.settings)


@router.get("/alerts", response_model=AlertList)
def list_alerts(
    ctx: Annotated[Ctx, Depends(requires("alert.list"))],
    state: Annotated[str | None, Query(max_length=20, description="open, restored or upheld")] = None,
    user_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    rule: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> dict[str, Any]:
    """Alerts raised by the abnormal-use rules, newest first (approvers, auditors and admins; audited)."""
    with ctx.db.session() as s:
        found = alerts.list_alerts(
            s, ctx.me, ctx.actor, ctx.meta, ctx.now_us, state=state, user_id=user_id, rule=rule, limit=limit
        )
        return {"alerts": [_one(ctx, s, a) for a in found]}


@router.get("/alerts/{alert_id}", response_model=AlertView)
def get_alert(alert_id: int, ctx: Annotated[Ctx, Depends(requires("alert.read"))]) -> dict[str, Any]:
    ctx.hint(object_id=f"alert:{alert_id}")
    with ctx.db.session() as s:
        return _one(ctx, s, alerts.get_alert(s, ctx.me, ctx.actor, ctx.meta, alert_id, ctx.now_us))


@router.post("/alerts/{alert_id}/review", response_model=ReviewResult)
def review_alert(
    alert_id: int, body: ReviewBody, ctx: Annotated[Ctx, Depends(requires("alert.review"))]
) -> dict[str, Any]:
    """An approver other than the alert's user decides: ``restore`` resumes the grants the alert suspended (those
    it still holds, not expired or revoked), ``uphold`` leaves them suspended. 409 ``alert_reviewed`` once decided."""
    ctx.hint(object_id=f"alert:{alert_id}")
    with ctx.db.session() as s:
        r = alerts.review(s, ctx.settings, ctx.me, ctx.meta, alert_id, body.decision, body.note, ctx.now_us)
        return {
            "alert": _one(ctx, s, r.alert),
            "resumed_grants": r.resumed,
            "still_suspended": r.still_suspended,
            "held_by_alert": r.held_by,
        }
