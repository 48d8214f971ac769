"""``nvr user`` and ``nvr audit``: real-name users and the audit trail."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from nvr.cli.common import JsonOpt, audit_app, cli_actor, emit, read_password, runtime, user_app


def _actor_and_now(rt: Any) -> tuple[Any, Any, int]:
    from api import audit

    return cli_actor(), audit.CLI, rt.clock.now_us()


def _filed(view: dict[str, Any], as_json: bool, what: str) -> None:
    """A change that waits: its id, and what the second admin does with it."""
    emit(
        {"pending": True, "change": view},
        as_json,
        f"change {view['id']} filed: {what} needs a second admin's confirmation "
        f"(POST /api/v1/user-changes/{view['id']}/confirm by an admin other than the one who asked; "
        f"it lapses after {view['expires']})",
    )


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
    """Create a user. There is no default account: with no active admin this makes the first admin at once
    (bootstrap). Otherwise a user with admin, approver, officer or auditor is filed as a change that a second admin
    confirms through the API; operators and viewers are made at once."""
    from api import users

    rt = runtime()
    password = read_password(password_stdin)
    actor, meta, now = _actor_and_now(rt)
    with rt.db.session() as s:
        done = users.create_user(
            s,
            actor,
            meta,
            now,
            username=username,
            full_name=full_name,
            staff_number=staff_number,
            unit=unit,
            roles=role,
            password=password,
        )
        change = users.change_view(s, done.change, now) if done.change is not None else None
        view = users.user_view(done.user) if done.user is not None else None
    if change is not None:
        _filed(change, as_json, f"creating {username} ({', '.join(change['roles'] or [])})")
        return
    assert view is not None
    emit(view, as_json, f"created user {view['username']} (id {view['id']}, roles {','.join(view['roles'])})")


@user_app.command("list")
def user_list(as_json: JsonOpt = False) -> None:
    """Every user with state, roles and unit."""
    from api import users

    rt = runtime()
    with rt.db.session() as s:
        views = [users.user_view(u) for u in users.list_users(s)]
    human = [f"{u['id']:>4} {u['username']:<20} {u['state']:<9} {','.join(u['roles']):<24} {u['unit']}" for u in views]
    emit({"users": views}, as_json, "\n".join(human) or "no users")


@user_app.command("disable")
def user_disable(
    username: str,
    reason: Annotated[str | None, typer.Option(help="Why (kept in the audit trail).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Disable a user at once: their tokens and running streams stop. Never the last active admin."""
    from api import people, users

    rt = runtime()
    actor, meta, now = _actor_and_now(rt)
    with rt.db.session() as s:
        u = users.disable_user(s, actor, meta, now, people.find_user(s, username).id, reason)
        view = users.user_view(u)
    emit(view, as_json, f"user {username} is disabled; every token it had is revoked")


@user_app.command("enable")
def user_enable(
    username: str,
    reason: Annotated[str | None, typer.Option(help="Why (kept with the change).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """File re-enabling a disabled user (a second admin confirms it through the API). With no active admin at all,
    an admin is re-enabled at once (break-glass). No token from before comes back either way."""
    from api import people, users

    rt = runtime()
    actor, meta, now = _actor_and_now(rt)
    with rt.db.session() as s:
        done = users.enable_user(s, actor, meta, now, people.find_user(s, username).id, reason)
        change = users.change_view(s, done.change, now) if done.change is not None else None
        view = users.user_view(done.user) if done.user is not None else None
    if change is not None:
        _filed(change, as_json, f"re-enabling {username}")
        return
    emit(view, as_json, f"user {username} is active again (no active admin: break-glass); log in anew")


@user_app.command("roles")
def user_roles(
    username: str,
    role: Annotated[list[str], typer.Option("--role", help="The user's roles from now on; repeat.")],
    as_json: JsonOpt = False,
) -> None:
    """Set a user's roles. Removed roles (and an added operator or viewer) take effect at once; an added admin,
    approver, officer or auditor is filed as a change for a second admin."""
    from api import people, users

    rt = runtime()
    actor, meta, now = _actor_and_now(rt)
    with rt.db.session() as s:
        done = users.change_roles(s, actor, meta, now, people.find_user(s, username).id, role)
        change = users.change_view(s, done.change, now) if done.change is not None else None
        assert done.user is not None
        view = users.user_view(done.user)
    if change is not None:
        _filed(
            change,
            as_json,
            f"adding {', '.join(change['roles'] or [])} to {username} (now {','.join(view['roles']) or 'no role'})",
        )
        return
    emit(view, as_json, f"user {username} has roles {','.join(view['roles']) or '(none)'}")


@user_app.command("password")
def user_password(
    username: str,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Set a user's password: filed as a change for a second admin, except for the only active admin, whose lost
    password is reset at once (break-glass). Either way the user's tokens end when it takes effect."""
    from api import people, users

    rt = runtime()
    password = read_password(password_stdin)
    actor, meta, now = _actor_and_now(rt)
    with rt.db.session() as s:
        done = users.reset_password(s, actor, meta, now, people.find_user(s, username).id, password)
        change = users.change_view(s, done.change, now) if done.change is not None else None
    if change is not None:
        _filed(change, as_json, f"a new password for {username}")
        return
    emit({"pending": False, "username": username}, as_json, f"password of {username} set (break-glass); tokens revoked")


@user_app.command("changes")
def user_changes(
    state: Annotated[
        str | None, typer.Option(help="pending | expired | confirmed | rejected | cancelled (default: all).")
    ] = None,
    cancel: Annotated[
        int | None, typer.Option("--cancel", help="Withdraw this pending change (one filed on the command line).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Changes to users that wait for (or had) a second admin. Confirming or rejecting one is an API action of an
    admin other than the requester: the command line files and withdraws, it never confirms."""
    from api import users

    rt = runtime()
    actor, meta, now = _actor_and_now(rt)
    with rt.db.session() as s:
        if cancel is not None:
            ch = users.cancel_change(s, actor, meta, now, cancel)
            view = users.change_view(s, ch, now)
        else:
            views = [users.change_view(s, ch, now) for ch in users.list_changes(s, actor, now, state)]
    if cancel is not None:
        emit(view, as_json, f"change {view['id']} cancelled ({view['summary']})")
        return
    human = [
        f"{c['id']:>4} {c['state']:<10} {c['summary']:<48} by {c['requested_by_name']} at {c['requested']}"
        for c in views
    ]
    emit({"changes": views}, as_json, "\n".join(human) or "no user changes")


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
