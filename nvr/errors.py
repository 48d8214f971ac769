"""One domain error type for the whole product.

Every failure that a person can cause or must act on is an :class:`NvrError` carrying a :class:`Kind` and a
stable ``code``. The CLI turns it into a message and a non-zero exit; the HTTP layer maps the kind to a status.
Nothing else is raised on purpose from domain code: a bare ``ValueError`` reaching the edge is a bug.

Kinds (after gRPC's canonical codes, as Moonfire does):

- ``NOT_FOUND``: the thing named does not exist (or the caller may not know that it does).
- ``INVALID_ARGUMENT``: the input is malformed, whatever the state of the system.
- ``FAILED_PRECONDITION``: the input is fine but the system's state forbids it now (wrong lifecycle state).
- ``CONFLICT``: it exists already.
- ``PERMISSION_DENIED``: the caller may not do this.
- ``UNAVAILABLE``: a resource is absent or full (a volume without its identity, a full disk).
- ``DATA_LOSS``: stored data does not match what was recorded about it.
- ``UNAUTHENTICATED``: no valid credential came with the request (missing, forged, expired, revoked).
- ``RESOURCE_EXHAUSTED``: a quota is used up (a grant's concurrent streams, a bundle's downloads).
- ``GONE``: it existed and has been removed for good (an export bundle past its lifetime).
"""

from __future__ import annotations

import enum


class Kind(enum.Enum):
    NOT_FOUND = "not_found"
    INVALID_ARGUMENT = "invalid_argument"
    FAILED_PRECONDITION = "failed_precondition"
    CONFLICT = "conflict"
    PERMISSION_DENIED = "permission_denied"
    UNAVAILABLE = "unavailable"
    DATA_LOSS = "data_loss"
    UNAUTHENTICATED = "unauthenticated"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    GONE = "gone"


class NvrError(Exception):
    """A failure with a kind (how to react) and a stable code (what exactly happened)."""

    def __init__(self, kind: Kind, code: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"
