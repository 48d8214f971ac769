"""Request bodies. ``extra="forbid"``: a misspelt field is an error, not silently ignored.

No text of a request may hold a NUL character or an unpaired surrogate (``"\\ud800"`` in JSON): PostgreSQL text
cannot store a NUL, and neither database can encode a lone surrogate, so either would fail the request's own
transaction or its audit event deep inside, as a server error. :class:`Body` refuses them in every field of every
body, :func:`refuse_bad_text` in the path and query of every request (422 ``request_invalid``)."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.context import authenticated, request_hint
from nvr.errors import Kind, NvrError

Text200 = Annotated[str, Field(min_length=1, max_length=200)]


def bad_text(text: str) -> bool:
    """Whether no database could store ``text`` as it is: a NUL, or a surrogate that UTF-8 cannot encode."""
    if "\x00" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _holds_bad_text(value: Any) -> bool:
    if isinstance(value, str):
        return bad_text(value)
    if isinstance(value, dict):
        return any(_holds_bad_text(k) or _holds_bad_text(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_bad_text(v) for v in value)
    return False


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any) -> Any:
        if _holds_bad_text(data):
            raise ValueError("text may not contain NUL characters or unpaired surrogates")
        return data


def _printable(text: str) -> str:
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def refuse_bad_text(request: Request) -> None:
    """A dependency of every route: refuse a path or query holding text no database can store. The denial event
    then records the path and purpose with such characters replaced (U+FFFD), so it can be stored."""
    path = request.url.path
    q = request.query_params
    if bad_text(path) or any(bad_text(k) or bad_text(v) for k, v in q.multi_items()):
        hint = request_hint(request)
        hint["action"] = _printable(f"{request.method.lower()} {path}")[:64]
        if "purpose" in q:
            hint["purpose"] = _printable(q["purpose"])
        if request.headers.get("authorization"):
            # Name the person in the denial event (a refusal of a logged-in user is never an anonymous one); a
            # token that does not authenticate leaves it a refusal without a credential.
            with contextlib.suppress(NvrError):
                authenticated(request, hint["action"])
        for key, value in list(hint.items()):  # authenticating names the path's camera id, as it came
            if isinstance(value, str):
                hint[key] = _printable(value)
        raise NvrError(
            Kind.INVALID_ARGUMENT,
            "request_invalid",
            "the path or query holds a NUL character or an unpaired surrogate, which no text may hold",
        )


class LoginBody(Body):
    username: Annotated[str, Field(min_length=1, max_length=64)]
    password: Annotated[str, Field(min_length=1, max_length=1024)]


class TokenBody(Body):
    name: Text200
    expires_in_days: Annotated[int, Field(ge=1, le=365)] = 90


class UserBody(Body):
    username: Annotated[str, Field(min_length=1, max_length=64)]
    full_name: Text200
    staff_number: Annotated[str, Field(min_length=1, max_length=64)]
    unit: Text200
    roles: Annotated[list[str], Field(min_length=1, max_length=6)]
    password: Annotated[str, Field(min_length=1, max_length=1024)]


class UserPatch(Body):
    full_name: Text200 | None = None
    unit: Text200 | None = None
    roles: Annotated[list[str], Field(min_length=1, max_length=6)] | None = None
    state: Annotated[str, Field(max_length=20)] | None = None
    password: Annotated[str, Field(min_length=1, max_length=1024)] | None = None


class PasswordBody(Body):
    current_password: Annotated[str, Field(min_length=1, max_length=1024)]
    new_password: Annotated[str, Field(min_length=1, max_length=1024)]


class CameraBody(Body):
    id: Annotated[str, Field(min_length=1, max_length=64)]
    name: Text200
    stream_url: Annotated[str, Field(min_length=1, max_length=2000)]
    managing_unit: Text200
    address: Annotated[str, Field(max_length=2000)] | None = None
    latitude: float | None = None
    longitude: float | None = None
    installation_notes: Annotated[str, Field(max_length=4000)] | None = None
    share_class: Annotated[str, Field(max_length=20)] = "authorized"


class CameraPatch(Body):
    name: Text200 | None = None
    stream_url: Annotated[str, Field(min_length=1, max_length=2000)] | None = None
    managing_unit: Text200 | None = None
    address: Annotated[str, Field(max_length=2000)] | None = None
    latitude: float | None = None
    longitude: float | None = None
    installation_notes: Annotated[str, Field(max_length=4000)] | None = None
    share_class: Annotated[str, Field(max_length=20)] | None = None


class StateBody(Body):
    state: Annotated[str, Field(max_length=20)]
    reason: Annotated[str, Field(max_length=2000)] | None = None


class ReasonBody(Body):
    reason: Annotated[str, Field(max_length=2000)] | None = None


class WindowBody(Body):
    start: Annotated[str, Field(max_length=64)] | None = None
    end: Annotated[str, Field(max_length=64)] | None = None
    last_days: Annotated[int, Field(ge=1, le=3650)] | None = None


class AccessRequestBody(Body):
    cameras: Annotated[list[Annotated[str, Field(max_length=64)]], Field(min_length=1, max_length=1000)]
    actions: Annotated[list[Annotated[str, Field(max_length=20)]], Field(min_length=1, max_length=3)]
    window: WindowBody
    valid_until: Annotated[str, Field(max_length=64)]
    purpose: Annotated[str, Field(min_length=1, max_length=2000)]
    case_ref: Text200
    max_streams: Annotated[int, Field(ge=1, le=16)] = 2


class GrantBody(AccessRequestBody):
    user_id: Annotated[int, Field(ge=1, le=2**62)]
    valid_from: Annotated[str, Field(max_length=64)] | None = None


class TicketBody(Body):
    start: Annotated[str, Field(max_length=64)]
    end: Annotated[str, Field(max_length=64)]
    purpose: Annotated[str, Field(min_length=1, max_length=2000)]
