"""Managing users: one function per use case, called alike by the HTTP routes (api.routes.users) and the ``nvr user``
commands (nvr.cli.users). Each takes the session, who acts, the request metadata and ``now_us``, enforces the rule
and writes its own audit event(s) in the caller's transaction. docs/users.md is the design in prose.

Who acts is an admin's :class:`api.people.Principal` (from the API) or the command line's actor
(``nvr.cli.common.cli_actor()``: an :class:`api.audit.Actor` with no user id).

The rules:

- **Separation of duties** (:func:`api.roles.check_separation`): nobody is made, or made into, an admin who is also
  approver, officer or auditor (422 ``role_conflict``).
- **Two people**: creating a user with a role in :data:`api.roles.CONFIRMED_ROLES`, adding such a role, re-enabling
  a disabled user, or setting someone's password without knowing the current one does not take effect: it files a
  pending :class:`nvr.models.UserChange` (a password only as its argon2 hash) that a second admin confirms or
  rejects through the API. The confirming admin is neither the one who asked nor the user the change is about; the
  command line can file and cancel its own changes but never confirm one (shell access is not a second person).
  Two confirmations racing: one conditional UPDATE on ``state = 'pending'`` lets exactly one through.
- **Bootstrap / break-glass** (command line only, when nobody could confirm): with no active admin at all, the CLI
  creates an admin or re-enables one directly; when the only active admin lost their password, the CLI resets it.
  Audited as such.
- **Least privilege at once**: removing roles and disabling take effect immediately, but never leave the system
  without an active admin (409 ``last_admin``): the active admins' rows are locked first (PostgreSQL) and the
  check runs after the write (SQLite's write lock), so two admins disabling each other at once cannot both win.
- Disabling, re-enabling and a password reset end every token the user had (:func:`api.people.cut_tokens`).

Audit actions: ``user.create``, ``user.update`` (name, unit), ``user.roles``, ``user.disable``, ``user.enable``,
``user.password.reset``, ``user.change.request``, ``user.change.confirm``, ``user.change.reject``,
``user.change.cancel``; ``object_id`` is ``user:<id>`` or ``user_change:<id>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api import people
from api.audit import Actor, Event, RequestMeta, record
from api.people import Principal
from api.roles import CONFIRMED_ROLES, ROLES, check_separation, parse_roles, validate_roles
from nvr.clock import iso
from nvr.errors import Kind, NvrError
from nvr.models import User, UserChange

Acting = Principal | Actor
CHANGE_DAYS = 7
"""A pending change not confirmed within this many days can no longer be confirmed (it shows as ``expired``)."""
CHANGE_LIFETIME_US = CHANGE_DAYS * people.US_PER_DAY
KINDS = ("create", "roles", "enable", "password")
STATES = ("pending", "confirmed", "rejected", "cancelled")
LIST_STATES = (*STATES, "expired")


@dataclass(frozen=True)
class Outcome:
    """What a use case did: ``user`` as it is now (None for a user that exists only in a pending change) and the
    change it filed, if any part waits for a second admin."""

    user: User | None
    change: UserChange | None = None

    @property
    def pending(self) -> bool:
        return self.change is not None


# --- who acts ---------------------------------------------------------------------------------------------------
def _actor(acting: Acting) -> Actor:
    return acting.actor if isinstance(acting, Principal) else acting


def _is_cli(acting: Acting) -> bool:
    return not isinstance(acting, Principal)


def _require_admin(acting: Acting) -> None:
    if isinstance(acting, Principal):
        if not acting.can("users.manage"):
            raise NvrError(Kind.PERMISSION_DENIED, "role_forbidden", "your roles do not allow this")
    elif acting.id is not None:
        # Only a logged-in admin (a Principal) or the command line (no user id) manages users.
        raise NvrError(Kind.PERMISSION_DENIED, "role_forbidden", "managing users needs an admin")


def _audit(s: Session, now_us: int, acting: Acting, meta: RequestMeta, action: str, obj: str, reason: str) -> None:
    s.flush()
    record(s, now_us, _actor(acting), meta, Event(action, "ok", object_id=obj, reason=reason))


# --- reading --------------------------------------------------------------------------------------------------
def get_user(s: Session, user_id: int) -> User:
    if not 0 < user_id < 2**62:
        raise NvrError(Kind.NOT_FOUND, "user_not_found", f"no user {user_id}")
    return people.get_user(s, user_id)


def list_users(s: Session) -> list[User]:
    return list(s.scalars(select(User).order_by(User.id)))


def user_view(u: User) -> dict[str, Any]:
    return {
        "id": u.id,
        "username": u.username,
        "full_name": u.full_name,
        "staff_number": u.staff_number,
        "unit": u.unit,
        "roles": list(parse_roles(u.roles)),
        "state": u.state,
        "auth_source": u.auth_source or people.LOCAL,
        "created": iso(u.created_us),
        "updated": iso(u.updated_us),
    }


def _payload(ch: UserChange) -> dict[str, Any]:
    try:
        data = json.loads(ch.payload)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def change_state(ch: UserChange, now_us: int) -> str:
    """The stored state, or ``expired`` for a pending change past its lifetime (derived, never stored)."""
    if ch.state == "pending" and ch.requested_us + CHANGE_LIFETIME_US <= now_us:
        return "expired"
    return ch.state


def change_summary(ch: UserChange) -> str:
    data = _payload(ch)
    subject = f"user:{ch.user_id}" if ch.user_id is not None else f"username={ch.username}"
    if ch.kind == "create":
        return f"create username={ch.username} roles={data.get('roles', '')}"
    if ch.kind == "roles":
        return f"roles {subject} +{','.join(data.get('add', []))}"
    return f"{ch.kind} {subject}"


def change_view(s: Session, ch: UserChange, now_us: int) -> dict[str, Any]:
    data = _payload(ch)
    roles = data.get("roles", "").split(",") if ch.kind == "create" else data.get("add") if ch.kind == "roles" else None
    u = s.get(User, ch.user_id) if ch.user_id is not None else None
    return {
        "id": ch.id,
        "kind": ch.kind,
        "state": change_state(ch, now_us),
        "summary": change_summary(ch),
        "user_id": ch.user_id,
        "username": ch.username,
        "roles": [r for r in roles if r] if isinstance(roles, list) else None,
        "requested_by": ch.requested_by,
        "requested_by_name": ch.requested_by_name,
        "requested": iso(ch.requested_us),
        "expires": iso(ch.requested_us + CHANGE_LIFETIME_US),
        "decided_by": ch.decided_by,
        "decided": iso(ch.decided_us),
        "note": ch.note,
        "user": user_view(u) if u is not None else None,
    }


def list_changes(s: Session, acting: Acting, now_us: int, state: str | None = None) -> list[UserChange]:
    """Changes newest first; ``state`` one of :data:`LIST_STATES` (``expired``: pending past their lifetime)."""
    _require_admin(acting)
    if state is not None and state not in LIST_STATES:
        raise NvrError(
            Kind.INVALID_ARGUMENT, "user_change_state_invalid", f"state must be one of {', '.join(LIST_STATES)}"
        )
    q = select(UserChange).order_by(UserChange.id.desc()).limit(1000)
    if state in ("pending", "expired"):
        q = q.where(UserChange.state == "pending")
        live = UserChange.requested_us > now_us - CHANGE_LIFETIME_US
        q = q.where(live if state == "pending" else ~live)
    elif state is not None:
        q = q.where(UserChange.state == state)
    return list(s.scalars(q))


def get_change(s: Session, change_id: int) -> UserChange:
    ch = s.get(UserChange, change_id) if 0 < change_id < 2**62 else None
    if ch is None:
        raise NvrError(Kind.NOT_FOUND, "user_change_not_found", f"no user change {change_id}")
    return ch


# --- the last admin ------------------------------------------------------------------------------------------
def _active_admins(s: Session, *, lock: bool = False) -> list[int]:
    """Ids of active users holding ``admin``. ``lock``: lock their rows (PostgreSQL; SQLite renders no FOR UPDATE
    and serialises writers with its write lock instead), in id order so two such transactions never deadlock."""
    q = select(User.id, User.roles).where(User.state == "active", User.roles.like("%admin%")).order_by(User.id)
    if lock:
        q = q.with_for_update()
    return [uid for uid, roles in s.execute(q) if "admin" in parse_roles(roles)]


def _keep_an_admin(s: Session) -> None:
    s.flush()
    if not _active_admins(s):
        raise NvrError(
            Kind.FAILED_PRECONDITION, "last_admin", "this would leave no active admin; make another admin first"
        )


# --- filing a change -----------------------------------------------------------------------------------------
def _live_pending(now_us: int) -> Any:
    return select(UserChange).where(
        UserChange.state == "pending", UserChange.requested_us > now_us - CHANGE_LIFETIME_US
    )


def _refuse_duplicate(s: Session, now_us: int, kind: str, user_id: int) -> None:
    if s.scalar(_live_pending(now_us).where(UserChange.kind == kind, UserChange.user_id == user_id)) is not None:
        raise NvrError(
            Kind.CONFLICT,
            "user_change_pending",
            f"a {kind} change for user {user_id} is waiting for confirmation already; confirm, reject or cancel it",
        )


def _file(
    s: Session,
    acting: Acting,
    meta: RequestMeta,
    now_us: int,
    kind: str,
    username: str,
    user_id: int | None,
    payload: dict[str, Any],
) -> UserChange:
    actor = _actor(acting)
    ch = UserChange(
        kind=kind,
        user_id=user_id,
        username=username,
        payload=json.dumps(payload, sort_keys=True),
        requested_by=acting.user_id if isinstance(acting, Principal) else None,
        requested_by_name=(actor.name or "unknown")[:200],
        requested_us=now_us,
        state="pending",
    )
    s.add(ch)
    s.flush()
    _audit(s, now_us, acting, meta, "user.change.request", f"user_change:{ch.id}", change_summary(ch))
    return ch


# --- the use cases -------------------------------------------------------------------------------------------
def create_user(
    s: Session,
    acting: Acting,
    meta: RequestMeta,
    now_us: int,
    *,
    username: str,
    full_name: str,
    staff_number: str,
    unit: str,
    roles: list[str],
    password: str,
) -> Outcome:
    """A local user. With a confirmed role it is a pending ``create`` change (the user does not exist until a
    second admin confirms), except the command line's first admin when no active admin exists (bootstrap)."""
    _require_admin(acting)
    u = people.new_user(
        username=username, full_name=full_name, staff_number=staff_number, unit=unit, roles=roles, now_us=now_us
    )
    password_hash = people.hash_password(password)
    people.check_new_user(s, u.username, u.staff_number)
    for ch in s.scalars(_live_pending(now_us).where(UserChange.kind == "create")):
        if ch.username == u.username or _payload(ch).get("staff_number") == u.staff_number:
            raise NvrError(
                Kind.CONFLICT,
                "user_change_pending",
                f"creating {ch.username!r} is waiting for confirmation already (change {ch.id})",
            )
    held = parse_roles(u.roles)
    bootstrap = _is_cli(acting) and "admin" in held and not _active_admins(s)
    if CONFIRMED_ROLES.isdisjoint(held) or bootstrap:
        u.password_hash = password_hash
        people.add_user(s, u)
        note = f"roles={u.roles}" + ("; bootstrap: no active admin" if bootstrap else "")
        _audit(s, now_us, acting, meta, "user.create", f"user:{u.id}", note)
        return Outcome(u)
    payload = {
        "full_name": u.full_name,
        "staff_number": u.staff_number,
        "unit": u.unit,
        "roles": u.roles,
        "password_hash": password_hash,
    }
    return Outcome(None, _file(s, acting, meta, now_us, "create", u.username, None, payload))


def _lock(s: Session, user_id: int) -> User:
    """Take the active admins' rows (id order) and then the user's, before anything else is written: every use case
    that changes a user takes its locks in this order and before its audit event, so two never wait on each other
    in a cycle, and each reads the user afresh."""
    _active_admins(s, lock=True)
    return people.lock_user(s, user_id)


def update_user(
    s: Session,
    acting: Acting,
    meta: RequestMeta,
    now_us: int,
    user_id: int,
    *,
    full_name: str | None = None,
    unit: str | None = None,
) -> User:
    """Name and unit take effect at once (audited with the fields' names)."""
    _require_admin(acting)
    return _update(s, acting, meta, now_us, _lock(s, user_id), full_name, unit)


def _update(
    s: Session, acting: Acting, meta: RequestMeta, now_us: int, u: User, full_name: str | None, unit: str | None
) -> User:
    changed = []
    if full_name is not None:
        value = people.require_text(full_name, "full_name_invalid", "full name")
        if value != u.full_name:
            u.full_name = value
            changed.append("full_name")
    if unit is not None:
        value = people.require_text(unit, "unit_invalid", "unit")
        if value != u.unit:
            u.unit = value
            changed.append("unit")
    u.updated_us = now_us
    _audit(s, now_us, acting, meta, "user.update", f"user:{u.id}", ", ".join(changed) or "no change")
    return u


def change_roles(s: Session, acting: Acting, meta: RequestMeta, now_us: int, user_id: int, roles: list[str]) -> Outcome:
    """Make the user's roles ``roles``. Removals (and added ``operator`` / ``viewer``) take effect at once; added
    confirmed roles wait for a second admin in a ``roles`` change (payload: the roles to add)."""
    _require_admin(acting)
    target = set(parse_roles(validate_roles(roles)))  # role_invalid, role_conflict
    return _change_roles(s, acting, meta, now_us, _lock(s, user_id), target)


def _later_roles(u: User, target: set[str]) -> set[str]:
    return (target - set(parse_roles(u.roles))) & CONFIRMED_ROLES


def _change_roles(s: Session, acting: Acting, meta: RequestMeta, now_us: int, u: User, target: set[str]) -> Outcome:
    current = set(parse_roles(u.roles))
    add = target - current
    remove = current - target
    later = _later_roles(u, target)
    if later:
        _refuse_duplicate(s, now_us, "roles", u.id)
    now_roles = (current - remove) | (add - later)
    if now_roles != current:
        check_separation(sorted(now_roles))
        u.roles = ",".join(r for r in ROLES if r in now_roles)
        u.updated_us = now_us
        if "admin" in remove:
            _keep_an_admin(s)
        parts = [f"roles={u.roles}"]
        if remove:
            parts.append(f"removed {','.join(r for r in ROLES if r in remove)}")
        if add - later:
            parts.append(f"added {','.join(r for r in ROLES if r in add - later)}")
        _audit(s, now_us, acting, meta, "user.roles", f"user:{u.id}", "; ".join(parts))
    if not later:
        return Outcome(u)
    payload = {"add": [r for r in ROLES if r in later]}
    return Outcome(u, _file(s, acting, meta, now_us, "roles", u.username, u.id, payload))


def disable_user(
    s: Session, acting: Acting, meta: RequestMeta, now_us: int, user_id: int, reason: str | None = None
) -> User:
    """At once: the user's tokens end and their next request (running streams included) is refused; never the
    last active admin (409 ``last_admin``)."""
    _require_admin(acting)
    return _disable(s, acting, meta, now_us, _lock(s, user_id), reason)


def _disable(s: Session, acting: Acting, meta: RequestMeta, now_us: int, u: User, reason: str | None) -> User:
    if u.state != "active":
        raise NvrError(Kind.FAILED_PRECONDITION, "user_state_invalid", f"user {u.username!r} is disabled already")
    people.set_state(s, u, "disabled", now_us)
    _keep_an_admin(s)
    _audit(s, now_us, acting, meta, "user.disable", f"user:{u.id}", "disabled" + (f": {reason}" if reason else ""))
    return u


def enable_user(
    s: Session, acting: Acting, meta: RequestMeta, now_us: int, user_id: int, reason: str | None = None
) -> Outcome:
    """A pending ``enable`` change; the command line re-enables an admin directly when no active admin exists.
    Either way no token from before comes back."""
    _require_admin(acting)
    return _enable_request(s, acting, meta, now_us, _lock(s, user_id), reason)


def _enable_request(s: Session, acting: Acting, meta: RequestMeta, now_us: int, u: User, reason: str | None) -> Outcome:
    if u.state == "active":
        raise NvrError(Kind.FAILED_PRECONDITION, "user_state_invalid", f"user {u.username!r} is active already")
    if _is_cli(acting) and "admin" in parse_roles(u.roles) and not _active_admins(s):
        _enable(s, u, now_us)
        _audit(s, now_us, acting, meta, "user.enable", f"user:{u.id}", "enabled; bootstrap: no active admin")
        return Outcome(u)
    _refuse_duplicate(s, now_us, "enable", u.id)
    payload = {"reason": reason} if reason else {}
    return Outcome(u, _file(s, acting, meta, now_us, "enable", u.username, u.id, payload))


def _enable(s: Session, u: User, now_us: int) -> None:
    if u.state == "active":
        raise NvrError(Kind.FAILED_PRECONDITION, "user_state_invalid", f"user {u.username!r} is active already")
    check_separation(parse_roles(u.roles))
    people.set_state(s, u, "active", now_us)


def reset_password(s: Session, acting: Acting, meta: RequestMeta, now_us: int, user_id: int, password: str) -> Outcome:
    """Set someone's password without their current one: a pending ``password`` change (so an admin never holds a
    working password of someone else's account alone), except on the command line for the only active admin
    (break-glass). When it takes effect the user's tokens end. A user changes their own with ``POST /me/password``."""
    _require_admin(acting)
    return _reset_password(s, acting, meta, now_us, _lock(s, user_id), password)


def _reset_password(s: Session, acting: Acting, meta: RequestMeta, now_us: int, u: User, password: str) -> Outcome:
    people.require_local_password(u)
    password_hash = people.hash_password(password)
    if _is_cli(acting) and u.state == "active" and _active_admins(s) == [u.id]:
        _set_password_hash(s, u, password_hash, now_us)
        note = "break-glass: the only active admin"
        _audit(s, now_us, acting, meta, "user.password.reset", f"user:{u.id}", note)
        return Outcome(u)
    _refuse_duplicate(s, now_us, "password", u.id)
    return Outcome(u, _file(s, acting, meta, now_us, "password", u.username, u.id, {"password_hash": password_hash}))


def _set_password_hash(s: Session, u: User, password_hash: str, now_us: int) -> None:
    people.require_local_password(u)
    u.password_hash = password_hash
    u.updated_us = now_us
    people.cut_tokens(s, u, now_us)


def patch_user(
    s: Session,
    acting: Acting,
    meta: RequestMeta,
    now_us: int,
    user_id: int,
    *,
    full_name: str | None = None,
    unit: str | None = None,
    roles: list[str] | None = None,
    state: str | None = None,
    password: str | None = None,
) -> Outcome:
    """Several of the above in one request (``PATCH /users/{id}``), each by its own rule and with its own event:
    name and unit, roles, state (``disabled`` at once; ``active`` files re-enabling), password (files a reset). At
    most one part may wait for a second admin (``user_change_one_at_a_time``); the parts that take effect at once
    are made even when one waits."""
    _require_admin(acting)
    if state is not None and state not in ("active", "disabled"):
        raise NvrError(Kind.INVALID_ARGUMENT, "user_state_invalid", "user state must be active or disabled")
    target = set(parse_roles(validate_roles(roles))) if roles is not None else None
    u = _lock(s, user_id)
    enabling = state == "active" and u.state != "active"
    waits = [password is not None, enabling, target is not None and bool(_later_roles(u, target))]
    if sum(waits) > 1:
        raise NvrError(
            Kind.INVALID_ARGUMENT,
            "user_change_one_at_a_time",
            "a password, re-enabling and added roles each need a second admin: send them one at a time",
        )
    if full_name is not None or unit is not None:
        _update(s, acting, meta, now_us, u, full_name, unit)
    outcome = Outcome(u)
    if target is not None:
        outcome = _change_roles(s, acting, meta, now_us, u, target)
    if state == "disabled":
        _disable(s, acting, meta, now_us, u, None)
    elif enabling:
        outcome = _enable_request(s, acting, meta, now_us, u, None)
    if password is not None:
        outcome = _reset_password(s, acting, meta, now_us, u, password)
    return outcome


def change_own_password(
    s: Session, me: Principal, meta: RequestMeta, now_us: int, current_password: str, new_password: str
) -> None:
    """Any user, knowing their current password (``password_wrong`` otherwise); not for identity-provider
    accounts (``password_not_local``). Their other tokens stay."""
    u = people.get_user(s, me.user_id)
    people.require_local_password(u)
    if not people.password_matches(u, current_password):
        raise NvrError(Kind.PERMISSION_DENIED, "password_wrong", "the current password is wrong")
    people.set_password(s, u, new_password, now_us)
    _audit(s, now_us, me, meta, "user.password", f"user:{u.id}", "own password changed")


# --- deciding a change ---------------------------------------------------------------------------------------
def _decide(
    s: Session, ch: UserChange, to_state: str, now_us: int, decided_by: int | None, note: str | None, *, live: bool
) -> None:
    """The one conditional UPDATE that moves a pending change on: of any number of racing decisions exactly one
    finds it pending (``live``: and not expired)."""
    cond = [UserChange.id == ch.id, UserChange.state == "pending"]
    if live:
        cond.append(UserChange.requested_us > now_us - CHANGE_LIFETIME_US)
    done = s.execute(
        update(UserChange)
        .where(*cond)
        .values(state=to_state, decided_by=decided_by, decided_us=now_us, note=note)
        .execution_options(synchronize_session=False)
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        raise NvrError(Kind.CONFLICT, "user_change_state_invalid", f"user change {ch.id} was decided already")
    s.refresh(ch)


def _decidable(ch: UserChange, now_us: int) -> None:
    state = change_state(ch, now_us)
    if state == "expired":
        raise NvrError(
            Kind.FAILED_PRECONDITION,
            "user_change_expired",
            f"user change {ch.id} was not confirmed within {CHANGE_DAYS} days; file it again",
        )
    if state != "pending":
        raise NvrError(Kind.CONFLICT, "user_change_state_invalid", f"user change {ch.id} is {state}")


def _second_admin(acting: Acting, ch: UserChange, verb: str) -> Principal:
    if not isinstance(acting, Principal):
        raise NvrError(
            Kind.PERMISSION_DENIED,
            "user_change_cli",
            f"a change is {verb} by a second admin logged in to the API; shell access is not a second person",
        )
    _require_admin(acting)
    if ch.requested_by == acting.user_id:
        raise NvrError(
            Kind.PERMISSION_DENIED,
            "user_change_same_admin",
            f"you asked for change {ch.id}: a different admin must decide it (or cancel it)",
        )
    if ch.user_id == acting.user_id:
        raise NvrError(
            Kind.PERMISSION_DENIED, "user_change_self", f"change {ch.id} is about you: another admin must decide it"
        )
    return acting


def confirm_change(s: Session, acting: Acting, meta: RequestMeta, now_us: int, change_id: int) -> UserChange:
    """A second admin (not the requester, not the user it is about) makes a pending change take effect."""
    ch = get_change(s, change_id)
    me = _second_admin(acting, ch, "confirmed")
    _decidable(ch, now_us)
    _decide(s, ch, "confirmed", now_us, me.user_id, None, live=True)
    data = _payload(ch)
    why = f"confirmed change {ch.id} requested by {ch.requested_by_name}"
    if ch.kind == "create":
        u = _create_from(s, ch, data, now_us)
        ch.user_id = u.id
        _audit(s, now_us, me, meta, "user.create", f"user:{u.id}", f"roles={u.roles}; {why}")
    else:
        u = people.lock_user(s, ch.user_id or 0)
        if ch.kind == "roles":
            target = set(parse_roles(u.roles)) | {r for r in data.get("add", []) if r in ROLES}
            check_separation(sorted(target))
            u.roles = ",".join(r for r in ROLES if r in target)
            u.updated_us = now_us
            _audit(s, now_us, me, meta, "user.roles", f"user:{u.id}", f"roles={u.roles}; {why}")
        elif ch.kind == "enable":
            _enable(s, u, now_us)
            _audit(s, now_us, me, meta, "user.enable", f"user:{u.id}", f"enabled; {why}")
        elif ch.kind == "password":
            _set_password_hash(s, u, str(data.get("password_hash", "")), now_us)
            _audit(s, now_us, me, meta, "user.password.reset", f"user:{u.id}", why)
        else:
            raise NvrError(Kind.FAILED_PRECONDITION, "user_change_invalid", f"unknown change kind {ch.kind!r}")
    _audit(s, now_us, me, meta, "user.change.confirm", f"user_change:{ch.id}", change_summary(ch))
    return ch


def _create_from(s: Session, ch: UserChange, data: dict[str, Any], now_us: int) -> User:
    roles = str(data.get("roles", ""))
    u = people.new_user(
        username=ch.username,
        full_name=str(data.get("full_name", "")),
        staff_number=str(data.get("staff_number", "")),
        unit=str(data.get("unit", "")),
        roles=list(parse_roles(roles)),
        now_us=now_us,
    )
    people.check_new_user(s, u.username, u.staff_number)
    u.password_hash = str(data.get("password_hash", ""))
    people.add_user(s, u)
    return u


def reject_change(
    s: Session, acting: Acting, meta: RequestMeta, now_us: int, change_id: int, note: str | None = None
) -> UserChange:
    """A second admin turns a pending (or expired) change down; nothing of it takes effect."""
    ch = get_change(s, change_id)
    me = _second_admin(acting, ch, "rejected")
    if ch.state != "pending":
        raise NvrError(Kind.CONFLICT, "user_change_state_invalid", f"user change {ch.id} is {ch.state}")
    _decide(s, ch, "rejected", now_us, me.user_id, _note(note), live=False)
    reason = change_summary(ch) + (f": {ch.note}" if ch.note else "")
    _audit(s, now_us, me, meta, "user.change.reject", f"user_change:{ch.id}", reason)
    return ch


def cancel_change(
    s: Session, acting: Acting, meta: RequestMeta, now_us: int, change_id: int, note: str | None = None
) -> UserChange:
    """The requester withdraws a pending change: the admin who filed it, or the command line for one filed there."""
    _require_admin(acting)
    ch = get_change(s, change_id)
    mine = ch.requested_by == acting.user_id if isinstance(acting, Principal) else ch.requested_by is None
    if not mine:
        raise NvrError(
            Kind.PERMISSION_DENIED,
            "user_change_not_requester",
            f"only whoever filed change {ch.id} can cancel it; another admin can reject it",
        )
    if ch.state != "pending":
        raise NvrError(Kind.CONFLICT, "user_change_state_invalid", f"user change {ch.id} is {ch.state}")
    decided_by = acting.user_id if isinstance(acting, Principal) else None
    _decide(s, ch, "cancelled", now_us, decided_by, _note(note), live=False)
    reason = change_summary(ch) + (f": {ch.note}" if ch.note else "")
    _audit(s, now_us, acting, meta, "user.change.cancel", f"user_change:{ch.id}", reason)
    return ch


def _note(note: str | None) -> str | None:
    note = (note or "").strip()
    if len(note) > 2000:
        raise NvrError(Kind.INVALID_ARGUMENT, "reason_invalid", "a reason is at most 2000 characters")
    return note or None


# --- identity-provider accounts ------------------------------------------------------------------------------
def apply_provider_roles(s: Session, u: User, roles: list[str], now_us: int, actor: Actor, meta: RequestMeta) -> bool:
    """For api.oidc: an identity-provider account's roles as the provider's claims map them. They do not go
    through a second admin (the provider is the source of truth), but separation of duties holds
    (``role_conflict``). True when they changed (then one ``user.roles`` event is written)."""
    if people.has_local_password(u):
        raise NvrError(
            Kind.FAILED_PRECONDITION, "user_not_provider", "only identity-provider accounts take roles from it"
        )
    value = validate_roles(roles) if roles else ""
    if value == u.roles:
        return False
    u = _lock(s, u.id)
    if value == u.roles:
        return False
    removed = set(parse_roles(u.roles)) - set(parse_roles(value))
    u.roles = value
    u.updated_us = now_us
    if "admin" in removed:
        _keep_an_admin(s)
    s.flush()
    record(
        s,
        now_us,
        actor,
        meta,
        Event("user.roles", "ok", object_id=f"user:{u.id}", reason=f"roles={value}; from the identity provider"),
    )
    return True
