"""Login throttling per account and per client address, and the admin's unlock (docs/security/abuse.md).

Two keys count every password login: ``user:<the name given>`` (whether or not such an account exists, so the
answers never tell which names exist) and ``addr:<client address>`` (an IPv6 address by its /64, see
:func:`client_key`). A key's ``failures`` is the number of attempts since its last success (or since it was
unlocked, or forgotten) that did not succeed. After ``login_max_failures`` of them for an account
(``login_addr_max_failures`` for an address) the key is locked for ``login_lock_seconds``, doubling with each
further failure up to ``login_lock_max_seconds``. A locked key answers 429 ``login_locked`` with ``Retry-After``
before the password is looked at, so the right password does not log in during a lock either.

**Counted before the password is checked.** An attempt first claims its place: one UPSERT per key increments the
counter, unless the key is locked (then nothing is counted and the attempt is refused). The attempt that reaches
the limit sets the lock in the same transaction, before its own password check. So parallel attempts cannot slip
past the limit while the (slow, argon2) checks run: of any number started at once, exactly the limit get their
password checked. A success then undoes its claim: the account's counter is reset (the row is deleted) and the
address's claim is given back (one decrement, and the lock lifted if this very attempt had set it). A refusal of
any kind after the claim (wrong password, unknown name, disabled account, an account that must log in through the
identity provider) keeps the claim: it is a failure. A key with no attempt for ``forget_us`` (twice the longest
lock, so that a sustained attack never outlives it) starts counting afresh; such rows are pruned.

Audited: each refused login is an ``auth.login`` ``denied`` event with its code as the reason (written by the API's
error handler, one event per attempt that reached the password check); an attempt that locks a key writes
``auth.login.lock`` (object ``user:…``/``addr:…``, reason: failures and lock length); an admin's unlock writes
``auth.login.unlock``. Refusals of a locked key are refusals without a credential and go through api.denials
(counted, the first of each bucket its own event, the rest summarised).
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, Table, case, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from api import audit, people
from nvr.clock import iso
from nvr.config import Settings
from nvr.db import Database
from nvr.errors import Kind, NvrError
from nvr.models import LoginThrottle, Token, User

ACCOUNT = "user:"
ADDRESS = "addr:"
US = 1_000_000
_T = cast(Table, LoginThrottle.__table__)


def client_key(addr: str | None) -> str:
    """The address a limit counts by: an IPv4 address as it is; an IPv6 address by its /64 network (one subscriber
    line or device gets a whole /64, so counting single addresses would let it rotate through 2^64 of them); an
    IPv4-mapped IPv6 address as the IPv4 address; anything else (no address) as given, or ``unknown``."""
    if not addr:
        return "unknown"
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return addr[:100]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def account_key(username: str) -> str:
    return ACCOUNT + username[:190]


def address_key(client_addr: str | None) -> str:
    return ADDRESS + client_key(client_addr)


def upsert(s: Session, table: Table) -> Any:
    """``INSERT … ON CONFLICT`` for this session's database (PostgreSQL and SQLite spell it the same way)."""
    dialect = s.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


@dataclass(frozen=True)
class Limits:
    account_failures: int
    address_failures: int
    lock_us: int
    lock_max_us: int

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        lock = int(settings.login_lock_seconds * US)
        return cls(
            settings.login_max_failures,
            settings.login_addr_max_failures,
            max(1, lock),
            max(1, lock, int(settings.login_lock_max_seconds * US)),
        )

    @property
    def forget_us(self) -> int:
        """A key with no attempt for this long starts counting afresh."""
        return 2 * self.lock_max_us

    def limit(self, key: str) -> int:
        return self.address_failures if key.startswith(ADDRESS) else self.account_failures

    def lock_for(self, failures: int, limit: int) -> int:
        """The lock after ``failures`` failures: the first lock at the limit, doubling with each one after it."""
        return min(self.lock_us << min(max(failures - limit, 0), 62), self.lock_max_us)


class LoginLocked(NvrError):
    """429 ``login_locked``; ``retry_after_s`` goes out as ``Retry-After``."""

    def __init__(self, until_us: int, now_us: int) -> None:
        self.retry_after_s = max(1, math.ceil((until_us - now_us) / US))
        super().__init__(
            Kind.RESOURCE_EXHAUSTED,
            "login_locked",
            f"too many failed logins for this account or from this address; try again in {self.retry_after_s} s",
        )


@dataclass(frozen=True)
class Claim:
    """One attempt's place on one key: the key's count with it, and the lock it set (if it reached the limit)."""

    key: str
    failures: int
    locked_until_us: int | None


def claim(s: Session, keys: list[str], limits: Limits, now_us: int) -> list[Claim]:
    """Count one attempt on every key, or none: raises :class:`LoginLocked` (the caller's transaction must then
    roll back, undoing the keys already counted) if any key is locked now. One UPSERT per key, in the order given
    (every caller gives the account before the address, so concurrent claims take row locks in one order)."""
    claims = []
    for key in keys:
        t = _T.c
        stmt = upsert(s, _T).values(key=key, failures=1, last_failure_us=now_us, locked_until_us=None)
        stmt = stmt.on_conflict_do_update(
            index_elements=[t.key],
            set_={
                "failures": case((t.last_failure_us < now_us - limits.forget_us, 1), else_=t.failures + 1),
                "last_failure_us": now_us,
            },
            where=or_(t.locked_until_us.is_(None), t.locked_until_us <= now_us),
        ).returning(t.failures)
        failures = s.execute(stmt).scalar()
        if failures is None:
            until = s.scalar(select(t.locked_until_us).where(t.key == key))
            raise LoginLocked(int(until or now_us), now_us)
        locked_until = None
        if failures >= limits.limit(key):
            # This attempt reaches the limit: lock now, before its password is checked, so the attempts racing it
            # are refused. The row is this transaction's (row lock, or SQLite's write lock) until it commits.
            locked_until = now_us + limits.lock_for(int(failures), limits.limit(key))
            s.execute(update(_T).where(t.key == key).values(locked_until_us=locked_until))
        claims.append(Claim(key, int(failures), locked_until))
    return claims


def succeeded(s: Session, claims: list[Claim]) -> None:
    """A successful login: the account's counter is reset; the address gets this attempt's claim back."""
    t = _T.c
    for c in claims:
        if c.key.startswith(ACCOUNT):
            s.execute(delete(_T).where(t.key == c.key))
            continue
        values: dict[str, Any] = {"failures": t.failures - 1}
        if c.locked_until_us is not None:  # this attempt set the address's lock; a success lifts it
            values["locked_until_us"] = case((t.locked_until_us == c.locked_until_us, None), else_=t.locked_until_us)
        s.execute(update(_T).where(t.key == c.key, t.failures > 0).values(**values))


def login(
    db: Database, settings: Settings, username: str, password: str, *, meta: audit.RequestMeta, now_us: int
) -> tuple[User, Token, str]:
    """A password login, throttled: claim (own transaction, so parallel attempts see it), check the password and
    open the session (second transaction, with the success event), or on a refusal write the lock events this
    attempt caused (third) and re-raise. Three transactions by necessity: the claim must be committed before the
    password check, and must stay committed when the attempt is refused."""
    limits = Limits.of(settings)
    with db.session() as s:
        claims = claim(s, [account_key(username), address_key(meta.client_addr)], limits, now_us)
    try:
        with db.session() as s:
            u, t, secret = people.login(
                s, username, password, now_us=now_us, session_us=int(settings.session_hours * 3600 * US)
            )
            succeeded(s, claims)
            audit.record(
                s, now_us, people.user_actor(u), meta, audit.Event("auth.login", "allowed", object_id=f"token:{t.id}")
            )
    except NvrError:
        locked = [c for c in claims if c.locked_until_us is not None]
        if locked:
            with db.session() as s:
                for c in locked:
                    assert c.locked_until_us is not None
                    reason = (
                        f"{c.failures} failed logins (limit {limits.limit(c.key)}): locked for "
                        f"{_seconds(c.locked_until_us - now_us)} s, "
                        f"until {iso(c.locked_until_us)}"
                    )
                    audit.record(
                        s,
                        now_us,
                        audit.SYSTEM,
                        meta,
                        audit.Event("auth.login.lock", "ok", object_id=c.key, reason=reason),
                    )
        raise
    return u, t, secret


def _seconds(us: int) -> str:
    return str(us // US) if us % US == 0 else f"{us / US:.3f}"


# --- what an admin sees and does -------------------------------------------------------------------------------
def lock_view(row: Any, now_us: int) -> dict[str, Any]:
    until = row.locked_until_us
    locked = until is not None and until > now_us
    kind, _, name = str(row.key).partition(":")
    return {
        "key": row.key,
        "kind": "account" if kind == "user" else "address",
        "name": name,
        "failures": int(row.failures),
        "last_attempt": iso(row.last_failure_us),
        "locked": locked,
        "locked_until": iso(until) if locked else None,
        "retry_after_seconds": max(1, math.ceil((until - now_us) / US)) if locked else 0,
    }


def list_locks(s: Session, now_us: int, *, everything: bool = False) -> list[dict[str, Any]]:
    """Keys locked now (``everything``: every key with a count), locked first, longest lock first."""
    t = _T.c
    q = select(_T).where(t.failures > 0) if everything else select(_T).where(t.locked_until_us > now_us)
    rows = [lock_view(r, now_us) for r in s.execute(q.order_by(t.key).limit(10_000))]
    return sorted(rows, key=lambda v: (not v["locked"], -v["retry_after_seconds"], v["key"]))


def check_key(key: str) -> str:
    if len(key) > 200 or not key.startswith((ACCOUNT, ADDRESS)) or len(key) <= len(ACCOUNT):
        raise NvrError(Kind.INVALID_ARGUMENT, "lock_key_invalid", "a throttle key is 'user:<name>' or 'addr:<address>'")
    return key


def unlock(s: Session, actor: audit.Actor, meta: audit.RequestMeta, now_us: int, key: str) -> dict[str, Any]:
    """Clear one key's count and lock (the row goes: one DELETE … RETURNING, so what it held is what the event
    says); audited ``auth.login.unlock``. 404 ``lock_not_found`` if the key has no count."""
    t = _T.c
    check_key(key)
    row = s.execute(
        delete(_T).where(t.key == key).returning(t.key, t.failures, t.last_failure_us, t.locked_until_us)
    ).first()
    if row is None:
        raise NvrError(Kind.NOT_FOUND, "lock_not_found", f"no failed logins are counted for {key!r}")
    view = lock_view(row, now_us)
    state = f"locked until {view['locked_until']}" if view["locked"] else "not locked"
    reason = f"cleared {view['failures']} failed logins; {state}"
    audit.record(s, now_us, actor, meta, audit.Event("auth.login.unlock", "ok", object_id=key, reason=reason))
    return view


def prune(s: Session, now_us: int, settings: Settings) -> int:
    """Delete the keys that count nothing any more (no attempt for ``forget_us`` and not locked)."""
    t = _T.c
    forget_before = now_us - Limits.of(settings).forget_us
    gone = cast(
        CursorResult[Any],
        s.execute(
            delete(_T).where(
                t.last_failure_us < forget_before, or_(t.locked_until_us.is_(None), t.locked_until_us <= now_us)
            )
        ),
    )
    return int(gone.rowcount or 0)
