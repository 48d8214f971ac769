"""Users, passwords and bearer tokens.

Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106's second recommended profile); a wrong
password and an unknown user fail the same way, after the same work. Tokens are 256-bit random secrets shown once;
the database keeps only their SHA-256 (a fast hash is right for high-entropy secrets and keeps the per-request
check cheap). Every request looks the token and its user up again, so a revoked token or a disabled user stops
working at the next request.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.audit import Actor
from api.roles import capabilities, parse_roles, validate_roles
from nvr.errors import Kind, NvrError
from nvr.models import Token, User

_hasher = PasswordHasher()
# Verified against when the user does not exist, so an unknown name costs as much as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))
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
    if not USERNAME.fullmatch(username):
        raise NvrError(
            Kind.INVALID_ARGUMENT,
            "username_invalid",
            "username must be 1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    u = User(
        username=username,
        full_name=require_text(full_name, "full_name_invalid", "full name"),
        staff_number=require_text(staff_number, "staff_number_invalid", "staff number", 64),
        unit=require_text(unit, "unit_invalid", "unit"),
        roles=validate_roles(roles),
        state="active",
        password_hash="",
        created_us=now_us,
        updated_us=now_us,
    )
    check_password_strength(password)
    if s.scalar(select(User.id).where(User.username == username)) is not None:
        raise NvrError(Kind.CONFLICT, "user_exists", f"user {username!r} already exists")
    if s.scalar(select(User.id).where(User.staff_number == u.staff_number)) is not None:
        raise NvrError(Kind.CONFLICT, "staff_number_exists", f"staff number {u.staff_number!r} is already in use")
    u.password_hash = _hasher.hash(password)
    s.add(u)
    s.flush()
    return u


def get_user(s: Session, user_id: int) -> User:
    u = s.get(User, user_id)
    if u is None:
        raise NvrError(Kind.NOT_FOUND, "user_not_found", f"no user {user_id}")
    return u


def find_user(s: Session, username: str) -> User:
    u = s.scalar(select(User).where(User.username == username))
    if u is None:
        raise NvrError(Kind.NOT_FOUND, "user_not_found", f"no user {username!r}")
    return u


def set_state(s: Session, u: User, state: str, now_us: int) -> None:
    if state not in ("active", "disabled"):
        raise NvrError(Kind.INVALID_ARGUMENT, "user_state_invalid", "user state must be active or disabled")
    u.state = state
    u.updated_us = now_us
    s.flush()


def set_password(s: Session, u: User, password: str, now_us: int) -> None:
    check_password_strength(password)
    u.password_hash = _hasher.hash(password)
    u.updated_us = now_us
    s.flush()


def password_matches(u: User | None, password: str) -> bool:
    """Constant work whether or not the user exists."""
    try:
        _hasher.verify(u.password_hash if u is not None else _DUMMY_HASH, password[:1024])
    except (VerificationError, InvalidHashError):
        return False
    return u is not None


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
    if t.revoked_us is not None:
        raise NvrError(Kind.UNAUTHENTICATED, "token_revoked", "this token has been revoked; log in again")
    if t.expires_us <= now_us:
        raise NvrError(Kind.UNAUTHENTICATED, "token_expired", "this token has expired; log in again")
    if u.state != "active":
        raise NvrError(Kind.UNAUTHENTICATED, "user_disabled", "this account is disabled")
    return Principal(u.id, u.username, u.full_name, u.unit, parse_roles(u.roles), t.id, t.kind)


def revoke_token(s: Session, t: Token, now_us: int) -> None:
    if t.revoked_us is None:
        t.revoked_us = now_us
        s.flush()


def list_tokens(s: Session, user_id: int) -> list[Token]:
    return list(s.scalars(select(Token).where(Token.user_id == user_id).order_by(Token.id)))
