"""``nvr alerts list|show|review``: abnormal-use alerts, through the same service functions as the API (api.alerts).

Listing is for whoever runs the command on the server (shell access; audited as ``cli:<os user>``). A review is a
decision of a real-name approver, so it names one with ``--as`` and asks for their password: the same rules as
``POST /api/v1/alerts/{id}/review`` apply (an approver, never the alert's own user; one review per alert).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from nvr.cli.common import JsonOpt, app, cli_actor, emit, runtime
from nvr.errors import Kind, NvrError

alerts_app = typer.Typer(no_args_is_help=True, help="Abnormal-use alerts: list, show, review (approvers).")
app.add_typer(alerts_app, name="alerts")


def _line(a: dict[str, Any]) -> str:
    who = (a["user"] or {}).get("username") or f"user {(a['user'] or {}).get('id')}"
    grants = ",".join(map(str, a["suspended_grants"])) or "-"
    return f"{a['id']:>5} {a['state']:<9} {a['rule']:<18} {who:<20} {a['raised']}  grants={grants}  {a['detail']}"


@alerts_app.command("list")
def alerts_list(
    state: Annotated[str | None, typer.Option("--state", help="open, restored or upheld.")] = None,
    user: Annotated[str | None, typer.Option("--user", help="Only alerts about this user (username).")] = None,
    rule: Annotated[str | None, typer.Option("--rule", help="Only this rule.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Alerts, newest first."""
    from api import alerts, audit, people

    rt = runtime()
    with rt.db.session() as s:
        user_id = people.find_user(s, user).id if user is not None else None
        found = alerts.list_alerts(
            s, None, cli_actor(), audit.CLI, rt.clock.now_us(), state=state, user_id=user_id, rule=rule
        )
        views = [alerts.view(s, a, rt.settings) for a in found]
    emit({"alerts": views}, as_json, "\n".join(_line(a) for a in views) or "no alerts")


@alerts_app.command("show")
def alerts_show(alert_id: int, as_json: JsonOpt = False) -> None:
    """One alert: what fired, which grants it suspended, the review."""
    from api import alerts, audit

    rt = runtime()
    with rt.db.session() as s:
        a = alerts.get_alert(s, None, cli_actor(), audit.CLI, alert_id, rt.clock.now_us())
        v = alerts.view(s, a, rt.settings)
    lines = [_line(v)]
    if v["reviewed"]:
        lines.append(f"  reviewed {v['reviewed']} by {(v['reviewed_by'] or {}).get('username')}: {v['review_note']}")
    emit(v, as_json, "\n".join(lines))


def approver(s: Any, username: str, password: str, now_us: int) -> Any:
    """The person named by ``--as``, after their password: a Principal as the API would have it."""
    from sqlalchemy import select

    from api import people
    from api.roles import parse_roles
    from nvr.models import User

    u = s.scalar(select(User).where(User.username == username)) if len(username) <= 64 else None
    if not people.password_matches(u, password) or u is None:
        raise NvrError(Kind.UNAUTHENTICATED, "login_failed", "user name or password is wrong")
    if u.state != "active":
        raise NvrError(Kind.UNAUTHENTICATED, "user_disabled", "this account is disabled")
    return people.Principal(
        user_id=u.id,
        username=u.username,
        full_name=u.full_name,
        unit=u.unit,
        roles=parse_roles(u.roles),
        token_id=0,
        token_kind="cli",  # noqa: S106  (a kind of principal, not a secret)
    )


@alerts_app.command("review")
def alerts_review(
    alert_id: int,
    decision: Annotated[str, typer.Option("--decision", help="restore (resume the grants) or uphold.")],
    note: Annotated[str, typer.Option("--note", help="Why; recorded in the audit trail.")],
    as_user: Annotated[str, typer.Option("--as", help="The approver deciding (their username).")],
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """An approver's review: ``restore`` resumes the grants the alert suspended, ``uphold`` keeps them suspended."""
    import sys

    from api import alerts, audit

    rt = runtime()
    password = sys.stdin.readline().rstrip("\n") if password_stdin else typer.prompt("password", hide_input=True)
    with rt.db.session() as s:
        p = approver(s, as_user, password, rt.clock.now_us())
    with rt.db.session() as s:
        r = alerts.review(s, rt.settings, p, audit.CLI, alert_id, decision, note, rt.clock.now_us())
        shown = alerts.view(s, r.alert, rt.settings)
        out = {
            "alert": shown,
            "resumed_grants": r.resumed,
            "still_suspended": r.still_suspended,
            "held_by_alert": r.held_by,
        }
    human = f"alert {alert_id} {shown['state']}"
    if r.resumed:
        human += f"; resumed grants {', '.join(map(str, r.resumed))}"
    if r.still_suspended:
        human += f"; still suspended {', '.join(map(str, r.still_suspended))}"
        if r.held_by:
            human += f" (held by open alert {r.held_by})"
    emit(out, as_json, human)
