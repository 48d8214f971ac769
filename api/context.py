"""Per-request plumbing shared by the routers: who is asking, from where, and what to audit if it is refused."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from api import alerts, audit, oidc
from api.people import Principal, RoleConflictRefused, authenticate
from integrity import trusted_time
from nvr.clock import Clock
from nvr.config import Settings
from nvr.db import Database
from nvr.errors import Kind, NvrError
from nvr.recorder import live
from nvr.recorder.live import LiveHub

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass
class Services:
    settings: Settings
    db: Database
    clock: Clock
    job_gate: Callable[[str], bool] | None = None
    """In a cluster (nvr.cluster): True while this node holds the once-per-cluster job's lease (the export runner
    runs only then); None runs every job here."""

    def now_us(self) -> int:
        """The time every access decision of the API is made at (and its audit events stamped with): the wall clock,
        but never earlier than the trusted bound (integrity.trusted_time), so setting the server clock back cannot
        revive an expired grant, token, ticket or approval."""
        return trusted_time.shared(self.db, self.settings, self.clock).access_now_us()

    @property
    def live(self) -> LiveHub:
        """The process's live-view hub (nvr.recorder.live.shared): fed by the recorder when this process runs one."""
        return live.shared(self.db)


@dataclass
class Ctx:
    """What an endpoint works with. ``principal`` is None only on the endpoints that need no login."""

    services: Services
    request: Request
    principal: Principal | None

    @property
    def db(self) -> Database:
        return self.services.db

    @property
    def now_us(self) -> int:
        return self.services.now_us()

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def meta(self) -> audit.RequestMeta:
        return request_meta(self.request)

    @property
    def actor(self) -> audit.Actor:
        return self.principal.actor if self.principal is not None else audit.ANONYMOUS

    @property
    def me(self) -> Principal:
        assert self.principal is not None
        return self.principal

    def hint(self, **fields: Any) -> None:
        """Facts for the denial event, should the request be refused after this point."""
        request_hint(self.request).update(fields)

    def record(self, s: Any, ev: audit.Event) -> int:
        # Through api.alerts: a user's retrievals and refusals meet the abnormal-use rules in this transaction.
        return alerts.record(s, self.settings, self.now_us, self.actor, self.meta, ev)


def request_id(request: Request) -> str:
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        given = request.headers.get("x-request-id", "")
        rid = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        request.state.request_id = rid
    return rid


def request_meta(request: Request) -> audit.RequestMeta:
    return audit.RequestMeta(
        client_addr=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
        request_id=request_id(request),
    )


def request_hint(request: Request) -> dict[str, Any]:
    hint = getattr(request.state, "audit_hint", None)
    if hint is None:
        hint = {}
        request.state.audit_hint = hint
    return hint


def services(request: Request) -> Services:
    return request.app.state.services


def bearer(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise NvrError(Kind.UNAUTHENTICATED, "auth_required", "log in and send 'Authorization: Bearer <token>'")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise NvrError(Kind.UNAUTHENTICATED, "token_invalid", "the Authorization header must be 'Bearer <token>'")
    return secret.strip()


def authenticated(request: Request, action: str, capability: str | None = None) -> Ctx:
    svc = services(request)
    hint = request_hint(request)
    hint.setdefault("action", action)
    camera_id = request.path_params.get("camera_id")
    if isinstance(camera_id, str):
        hint.setdefault("camera_id", camera_id[:64])
    meta = request_meta(request)
    secret = oidc.session_cookie(request) or bearer(request)  # the header, else the browser's session cookie
    if oidc.is_jwt(secret):  # an identity provider's access token (api.oidc)
        principal, due = oidc.authenticate_jwt(svc, secret, meta)
    else:
        now = svc.now_us()
        with svc.db.session() as s:
            try:
                principal = authenticate(s, secret, now)
            except RoleConflictRefused as exc:
                hint["denial_actor"] = exc.actor  # the denial names the user (api.app._record_denial)
                raise
            due = oidc.liveness_due(s, svc.settings, principal.user_id, now)
    request.state.principal = principal
    oidc.check_liveness(svc, due, meta)  # an identity-provider account: does the provider still vouch for it?
    if capability is not None and not principal.can(capability):
        raise NvrError(Kind.PERMISSION_DENIED, "role_forbidden", "your roles do not allow this")
    return Ctx(svc, request, principal)


def requires(action: str, capability: str | None = None):  # type: ignore[no-untyped-def]
    """A dependency: authenticate the bearer token and check one capability; name the action for the audit."""

    def dependency(request: Request) -> Ctx:
        return authenticated(request, action, capability)

    return dependency


def anonymous(action: str):  # type: ignore[no-untyped-def]
    def dependency(request: Request) -> Ctx:
        request_hint(request).setdefault("action", action)
        return Ctx(services(request), request, None)

    return dependency
