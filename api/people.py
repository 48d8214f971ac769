"""Users, passwords and bearer tokens.

Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106's second recommended profile); a wrong
password and an unknown user fail the same way, after the same work. Tokens are 256-bit random secrets shown once;
the database keeps only their SHA-256 (a fast hash is right for high-entropy secrets and keeps the per-request
check cheap). Every request looks the token and its user up again, so a revoked token or a disabled user stops
working at the next request.

A token made at or before its user's ``tokens_valid_after_us`` (set when the user is disabled or re-enabled, or a
password is reset) is refused
as revoked, whatever its own row says: re-enabling a user, or editing the ``state`` column back by hand, never
revives an old session or script token. A user whose stored roles break separation of duties (an admin who is also
approver, officer or auditor: only a row edited by hand can hold that) is refused at authentication with
``role_conflict`` rather than served with both roles' powers. Identity-provider accounts (``auth_source`` ``oidc``)
have no local password: password login and password changes are refused for them (:func:`require_local_password`).

Rules about who may change users (two admins, the last admin) live in :mod:`api.users`; this module holds the
records' own checks and the credentials.
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
import threading
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.audit import Actor
from api.roles import capabilities, parse_roles, separation_conflict, validate_roles
from nvr.errors import Kind, NvrError
from nvr.models import Token, User

_hasher = PasswordHasher()


_DUMMY_LOCK = threading.Lock()


# Verified against when the user does not exist, so an unknown name costs as much as a wrong password.
@functools.cache
def _dummy_hash() -> str:
    # Made on first use (importing this module costs no hash), once: a burst of parallel logins for unknown names
    # would otherwise hash it once per thread.
    with _DUMMY_LOCK:
        return _dummy_hash_once()


@functools.cache
def _dummy_hash_once() -> str:
    return _hasher.hash(secrets.token_hex(16))


USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
MIN_PASSWORD = 12
TOKEN_PREFIX = {"session": "nvrs_", "personal": "nvrp_"}
US_PER_DAY = 86_400 * 1_000_000


@dataclass(frozen=True)
class Principal:
    """The person behind a request, as the database says now."""

    user_id: int
    username: str
    full_name: str
    unit: str
    roles: tuple[str, ...]
    token_id: int
    token_kind: str

    @property
    def caps(self) -> frozenset[str]:
        return capabilities(self.roles)

    def can(self, capability: str) -> bool:
        return capability in self.caps

    @property
    def actor(self) -> Actor:
        return Actor(self.user_id, f"{self.full_name} ({self.username})", self.unit, ",".join(self.roles))


def user_actor(u: User) -> Actor:
    return Actor(u.id, f"{u.full_name} ({u.username})", u.unit, u.roles)


class RoleConflictRefused(NvrError):
    """Authentication refused because the user's stored roles break separation of duties (a row edited by hand).
    ``actor`` names the user, for the denial event."""

    def __init__(self, actor: Actor, clash: str) -> None:
        super().__init__(
            Kind.PERMISSION_DENIED,
            "role_conflict",
            f"this account's roles break separation of duties (admin with {clash}); an admin must correct them",
        )
        self.actor = actor


LOCAL = "local"
OIDC = "oidc"


def has_local_password(u: User) -> bool:
    """Whether the account logs in with a password kept here (``local``); identity-provider accounts do not."""
    return (u.auth_source or LOCAL) == LOCAL


def require_local_password(u: User) -> None:
    """Refuse a password change or reset for an identity-provider account (409 ``password_not_local``)."""
    if not has_local_password(u):
        raise NvrError(
            Kind.FAILED_PRECONDITION,
            "password_not_local",
            "this account signs in through the identity provider and has no local password",
        )


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise NvrError(Kind.INVALID_ARGUMENT, "password_weak", f"password must have at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise NvrError(Kind.INVALID_ARGUMENT, "password_invalid", "password is longer than 1024 characters")


def require_text(value: str, code: str, what: str, limit: int = 200) -> str:
    value = value.strip()
    if not value or len(value) > limit:
        raise NvrError(Kind.INVALID_ARGUMENT, code, f"{what} must be 1 to {limit} characters")
    return value


def new_user(*, username: str, full_name: str, staff_number: str, unit: str, roles: list[str], now_us: int) -> User:
    """A checked, not yet stored, active local user without a password hash (``role_conflict`` and the field
    codes when something is not allowed)."""
    if not USERNAME.fullmatch(username):
        raise NvrError(
            Kind.INVALID_ARGUMENT,
            "username_invalid",
            "username must be 1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return User(
        username=username,
        full_name=require_text(full_name, "full_name_invalid", "full name"),
        staff_number=require_text(staff_number, "staff_number_invalid", "staff number", 64),
        unit=require_text(unit, "unit_invalid", "unit"),
        roles=validate_roles(roles),
        state="active",
        password_hash="",
        auth_source=LOCAL,
        created_us=now_us,
        updated_us=now_us,
    )


def create_user(
    s: Session,
    *,
    username: str,
    full_name: str,
    staff_number: str,
    unit: str,
    roles: list[str],
    password: str,
    now_us: int,
) -> User:
    """Store a user at once, with no rule about who asks (api.users.create_user is the use case with its rules;
    this is the record, for it and for benchmarks)."""
    u = new_user(
        username=username, full_name=full_name, staff_number=staff_number, unit=unit, roles=roles, now_us=now_us
    )
    check_password_strength(password)
    check_new_user(s, u.username, u.staff_number)
    u.password_hash = _hasher.hash(password)
    add_user(s, u)
    return u


def hash_password(password: str) -> str:
    check_password_strength(password)
    return _hasher.hash(password)


def check_new_user(s: Session, username: str, staff_number: str) -> None:
    """``user_exists`` / ``staff_number_exists`` when either is taken."""
    if s.scalar(select(User.id).where(User.username == username)) is not None:
        raise NvrError(Kind.CONFLICT, "user_exists", f"user {username!r} already exists")
    if s.scalar(select(User.id).where(User.staff_number == staff_number)) is not None:
        raise NvrError(Kind.CONFLICT, "staff_number_exists", f"staff number {staff_number!r} is already in use")


def add_user(s: Session, u: User) -> None:
    """Insert; two requests racing for one user name or staff number: the loser gets 409, not a server error."""
    s.add(u)
    try:
        s.flush()
    except IntegrityError:
        raise NvrError(
            Kind.CONFLICT, "user_exists", f"user {u.username!r} or staff number {u.staff_number!r} exists already"
        ) from None


def get_user(s: Session, user_id: int) -> User:
    u = s.get(User, user_id)
    if u is None:
        raise NvrError(Kind.NOT_FOUND, "user_not_found", f"no user {user_id}")
    return u


def lock_user(s: Session, user_id: int) -> User:
    """The user's row, taken for this transaction and read afresh: a write to it first (PostgreSQL: its row lock;
    SQLite: the database write lock, which a transaction takes at its first write), so two changes to one user take
    turns and neither works from a stale copy."""
    done = (
        s.execute(
            update(User)
            .where(User.id == user_id)
            .values(updated_us=User.updated_us)
            .execution_options(synchronize_session=False)
        )
        if 0 < user_id < 2**62
        else None
    )
    if done is None or done.rowcount != 1:  # type: ignore[attr-defined]
        raise NvrError(Kind.NOT_FOUND, "user_not_found", f"no user {user_id}")
    u = s.get(User, user_id, populate_existing=True)
    assert u is not None
    return u


def find_user(s: Session, username: str) -> User:
    u = s.scalar(select(User).where(User.username == username))
    if u is None:
        raise NvrError(Kind.NOT_FOUND, "user_not_found", f"no user {username!r}")
    return u


def cut_tokens(s: Session, u: User, now_us: int) -> None:
    """End every token the user has now: each is revoked, and ``tokens_valid_after_us`` refuses any made at or
    before this moment even if its row is edited back (disabling, re-enabling, a password reset)."""
    u.tokens_valid_after_us = now_us
    s.execute(
        update(Token)
        .where(Token.user_id == u.id, Token.revoked_us.is_(None))
        .values(revoked_us=now_us)
        .execution_options(synchronize_session=False)
    )
    s.flush()


def set_state(s: Session, u: User, state: str, now_us: int) -> None:
    """Record-level only (the rules are api.users'): changing the state ends every token the user has."""
    if state not in ("active", "disabled"):
        raise NvrError(Kind.INVALID_ARGUMENT, "user_state_invalid", "user state must be active or disabled")
    u.state = state
    u.updated_us = now_us
    cut_tokens(s, u, now_us)


def set_password(s: Session, u: User, password: str, now_us: int) -> None:
    require_local_password(u)
    u.password_hash = hash_password(password)
    u.updated_us = now_us
    s.flush()


def password_matches(u: User | None, password: str) -> bool:
    """Constant work whether or not the user exists; an identity-provider account never matches."""
    local = u is not None and has_local_password(u) and bool(u.password_hash)
    try:
        _hasher.verify(u.password_hash if u is not None and local else _dummy_hash(), password[:1024])
    except (VerificationError, InvalidHashError):
        return False
    return local


def login(s: Session, username: str, password: str, *, now_us: int, session_us: int) -> tuple[User, Token, str]:
    """Check a password and open a session token. Raises ``login_failed`` without saying which part was wrong."""
    u = s.scalar(select(User).where(User.username == username)) if len(username) <= 64 else None
    if not password_matches(u, password) or u is None:
        raise NvrError(Kind.UNAUTHENTICATED, "login_failed", "user name or password is wrong")
    if u.state != "active":
        raise NvrError(Kind.UNAUTHENTICATED, "user_disabled", "this account is disabled")
    if _hasher.check_needs_rehash(u.password_hash):
        u.password_hash = _hasher.hash(password)
    token, secret = issue_token(s, u, "session", None, now_us=now_us, expires_us=now_us + session_us)
    return u, token, secret


def issue_token(s: Session, u: User, kind: str, name: str | None, *, now_us: int, expires_us: int) -> tuple[Token, str]:
    secret = TOKEN_PREFIX[kind] + secrets.token_urlsafe(32)
    t = Token(
        user_id=u.id,
        kind=kind,
        name=name,
        secret_hash=hash_secret(secret),
        created_us=now_us,
        expires_us=expires_us,
        revoked_us=None,
    )
    s.add(t)
    s.flush()
    return t, secret


def authenticate(s: Session, secret: str, now_us: int) -> Principal:
    """The principal behind a bearer secret, checked against the database now."""
    if not secret or len(secret) > 200:
        raise NvrError(Kind.UNAUTHENTICATED, "token_invalid", "the bearer token is not valid")
    row = s.execute(
        select(Token, User).join(User, Token.user_id == User.id).where(Token.secret_hash == hash_secret(secret))
    ).first()
    if row is None:
        raise NvrError(Kind.UNAUTHENTICATED, "token_invalid", "the bearer token is not valid")
    return _principal(row[0], row[1], now_us)


def principal_for(s: Session, t: Token, now_us: int) -> Principal:
    """The principal behind a token already looked up (a playback ticket names its session's token)."""
    return _principal(t, get_user(s, t.user_id), now_us)


def _principal(t: Token, u: User, now_us: int) -> Principal:
    if u.state != "active":
        raise NvrError(Kind.UNAUTHENTICATED, "user_disabled", "this account is disabled")
    cut = u.tokens_valid_after_us
    if t.revoked_us is not None or (cut is not None and t.created_us <= cut):
        raise NvrError(Kind.UNAUTHENTICATED, "token_revoked", "this token has been revoked; log in again")
    if t.expires_us <= now_us:
        raise NvrError(Kind.UNAUTHENTICATED, "token_expired", "this token has expired; log in again")
    roles = parse_roles(u.roles)
    clash = separation_conflict(roles)
    if clash is not None:
        raise RoleConflictRefused(user_actor(u), clash)
    return Principal(u.id, u.username, u.full_name, u.unit, roles, t.id, t.kind)


def revoke_token(s: Session, t: Token, now_us: int) -> None:
    if t.revoked_us is None:
        t.revoked_us = now_us
        s.flush()


def list_tokens(s: Session, user_id: int) -> list[Token]:
    return list(s.scalars(select(Token).where(Token.user_id == user_id).order_by(Token.id)))
