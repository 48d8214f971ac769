"""``nvr user`` and ``nvr audit``: real-name users and the audit trail."""

from __future__ import annotations

from typing import Annotated

import typer

from nvr.cli.common import JsonOpt, audit_app, cli_actor, emit, read_password, runtime, user_app


@user_app.command("create")
def user_create(
    username: Annotated[str, typer.Option("--username", help="Login name: lowercase letters, digits, . _ -")],
    full_name: Annotated[str, typer.Option("--name", help="Real name.")],
    staff_number: Annotated[str, typer.Option("--staff-number", help="Staff (badge) number, unique.")],
    unit: Annotated[str, typer.Option("--unit", help="Organisational unit.")],
    role: Annotated[list[str], typer.Option("--role", help="admin|approver|officer|operator|auditor|viewer; repeat.")],
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a user. There is no default account: this makes the first admin."""
    from api import audit, people
    from api.routes.auth import user_view

    rt = runtime()
    password = read_password(password_stdin)
    with rt.db.session() as s:
        u = people.create_user(
            s,
            username=username,
            full_name=full_name,
            staff_number=staff_number,
            unit=unit,
            roles=role,
            password=password,
            now_us=rt.clock.now_us(),
        )
        audit.record(
            s,
            rt.clock.now_us(),
            cli_actor(),
            audit.CLI,
            audit.Event("user.create", "ok", object_id=f"user:{u.id}", reason=f"roles={u.roles}"),
        )
        view = user_view(u)
    emit(view, as_json, f"created user {u.username} (id {u.id}, roles {u.roles})")


@user_app.command("list")
def user_list(as_json: JsonOpt = False) -> None:
    from sqlalchemy import select

    from api.routes.auth import user_view
    from nvr.models import User

    rt = runtime()
    with rt.db.session() as s:
        users = [user_view(u) for u in s.scalars(select(User).order_by(User.id))]
    human = [f"{u['id']:>4} {u['username']:<20} {u['state']:<9} {','.join(u['roles']):<24} {u['unit']}" for u in users]
    emit({"users": users}, as_json, "\n".join(human) or "no users")


def _user_state(username: str, state: str) -> None:
    from api import audit, people

    rt = runtime()
    with rt.db.session() as s:
        u = people.find_user(s, username)
        people.set_state(s, u, state, rt.clock.now_us())
        audit.record(
            s,
            rt.clock.now_us(),
            cli_actor(),
            audit.CLI,
            audit.Event("user.update", "ok", object_id=f"user:{u.id}", reason=f"state={state}"),
        )
    typer.echo(f"user {username} is {state}")


@user_app.command("disable")
def user_disable(username: str) -> None:
    """Disable a user: their tokens and running streams stop at once."""
    _user_state(username, "disabled")


@user_app.command("enable")
def user_enable(username: str) -> None:
    _user_state(username, "active")


@audit_app.command("verify")
def audit_verify(as_json: JsonOpt = False) -> None:
    """Recompute the audit chain and check it against every signed checkpoint (and the witness copies): exit 1
    naming the first event edited, removed or reordered, or a tail re-chained or cut off since a checkpoint."""
    from integrity import checkpoint_verify
    from integrity.audit_log import verify

    rt = runtime(migrate=False)
    with rt.db.session() as s:
        checked, problem = verify(s)
    cps = checkpoint_verify.check(rt.db, rt.settings, cameras=False)
    against = cps.problems
    data = {
        "ok": problem is None and not against,
        "checked": checked,
        "checkpoints": cps.checkpoints,
        "problem": None if problem is None else problem.__dict__,
        "checkpoint_problems": [p.as_dict() for p in against],
    }
    lines = [p.line() for p in against]
    if problem is None and not against:
        emit(data, as_json, f"audit trail intact: {checked} event(s) verified, {cps.checkpoints} checkpoint(s) agree")
        return
    head = (
        f"AUDIT TRAIL BROKEN at {problem} ({checked} event(s) verified before it)"
        if problem is not None
        else f"AUDIT TRAIL DISAGREES WITH ITS CHECKPOINTS ({checked} event(s) chain by themselves)"
    )
    emit(data, as_json, "\n".join([head, *lines]))
    raise typer.Exit(1)
