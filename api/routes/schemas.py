"""Request bodies. ``extra="forbid"``: a misspelt field is an error, not silently ignored."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Text200 = Annotated[str, Field(min_length=1, max_length=200)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
