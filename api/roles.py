"""Roles and what they may do.

A user holds one or more roles; a request is allowed when any held role carries the capability. Footage is never
reached through a role alone: the footage actions (``live``, ``playback``, ``export``) also need a grant, and a role
limits which actions a grant given to its holder may carry (a ``viewer`` never copies; an ``auditor`` never sees).
"""

from __future__ import annotations

from nvr.errors import Kind, NvrError

ROLES = ("admin", "approver", "officer", "operator", "auditor", "viewer")
ACTIONS = ("live", "playback", "export")

CAPABILITIES: dict[str, frozenset[str]] = {
    "admin": frozenset(
        {
            "users.manage",
            "cameras.manage",
            "cameras.protected",
            "grants.oversee",
            "retention.manage",
            "retention.read",
            "system.monitor",
            "integrity.read",
        }
    ),
    "approver": frozenset(
        {
            "grants.issue",
            "grants.oversee",
            "cameras.catalog",
            "holds.place",
            "holds.release",
            "retention.read",
            "exports.approve",
            "exports.oversee",
        }
    ),
    "officer": frozenset({"footage", "footage.request", "holds.place", "exports.request", "exports.cosign"}),
    "operator": frozenset({"footage", "system.monitor"}),
    "auditor": frozenset({"audit.read", "retention.read", "exports.oversee", "integrity.read", "integrity.resolve"}),
    "viewer": frozenset({"footage"}),
}
# Which footage actions a grant may give a holder of each role.
GRANTABLE_ACTIONS: dict[str, frozenset[str]] = {
    "officer": frozenset({"live", "playback", "export"}),
    "operator": frozenset({"live", "playback"}),
    "viewer": frozenset({"live", "playback"}),
}


# Separation of duties: an admin manages the system and its people, and never also decides on, reaches or audits
# footage, or one admin could grant, approve and cover up alone.
ADMIN_EXCLUDES = frozenset({"approver", "officer", "auditor"})
# Roles a second admin must confirm when a user is created with them or given them (api.users): they reach
# footage, decide on access, read the audit trail, or manage people.
CONFIRMED_ROLES = frozenset({"admin", "approver", "officer", "auditor"})


def parse_roles(text: str) -> tuple[str, ...]:
    return tuple(r for r in text.split(",") if r)


def validate_roles(roles: list[str]) -> str:
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise NvrError(
            Kind.INVALID_ARGUMENT,
            "role_invalid",
            f"roles must be a non-empty subset of {', '.join(ROLES)}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else ""),
        )
    check_separation(roles)
    return ",".join(r for r in ROLES if r in roles)


def separation_conflict(roles: tuple[str, ...] | list[str]) -> str | None:
    """The roles in ``roles`` that an admin may not hold beside ``admin``, as text; None when there is no conflict."""
    if "admin" not in roles:
        return None
    clash = sorted(ADMIN_EXCLUDES.intersection(roles))
    return ", ".join(clash) or None


def check_separation(roles: tuple[str, ...] | list[str]) -> None:
    clash = separation_conflict(roles)
    if clash is not None:
        raise NvrError(
            Kind.INVALID_ARGUMENT,
            "role_conflict",
            f"an admin cannot also be {clash}: separation of duties needs a second person",
        )


def capabilities(roles: tuple[str, ...]) -> frozenset[str]:
    out: set[str] = set()
    for r in roles:
        out |= CAPABILITIES.get(r, frozenset())
    return frozenset(out)


def grantable_actions(roles: tuple[str, ...]) -> frozenset[str]:
    """Footage actions a grant may carry for this holder. A viewer is view-only even if it holds other roles:
    the stricter role wins, so a view-only person can never be given a copy by adding a role beside it."""
    if "viewer" in roles:
        return GRANTABLE_ACTIONS["viewer"]
    out: set[str] = set()
    for r in roles:
        out |= GRANTABLE_ACTIONS.get(r, frozenset())
    return frozenset(out)
