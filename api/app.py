"""The HTTP API: FastAPI under /api/v1, one error model, an audit event for every refusal.

Routers are thin (api/routes): they parse, call a service, and shape the answer. Every error body is
``{"error": {"code": "...", "message": "..."}}`` with a stable code (docs/api.md lists them). A refused request
writes its denial event here, in a transaction of its own, after the request's own work was rolled back: so a
denial stores nothing but the record that it happened.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import alerts, audit, denials
from api.context import Services, request_hint, request_id, request_meta
from nvr.clock import parse_iso, sane
from nvr.errors import Kind, NvrError

log = logging.getLogger(__name__)
PREFIX = "/api/v1"

STATUS = {
    Kind.NOT_FOUND: 404,
    Kind.INVALID_ARGUMENT: 422,
    Kind.FAILED_PRECONDITION: 409,
    Kind.CONFLICT: 409,
    Kind.PERMISSION_DENIED: 403,
    Kind.UNAVAILABLE: 503,
    Kind.DATA_LOSS: 500,
    Kind.UNAUTHENTICATED: 401,
    Kind.RESOURCE_EXHAUSTED: 429,
    Kind.GONE: 410,
}
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 406: "not_acceptable", 415: "unsupported_media_type"}


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every refusal and failure: ``{"error": {"code": "...", "message": "..."}}``."""

    error: ErrorDetail


# Declared on every operation, so the OpenAPI document names the answers a client must handle (schemathesis checks
# that no undocumented status code or content type comes back). 422 replaces FastAPI's own validation-error model,
# which this API never sends.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (400, "The request body could not be parsed."),
        (401, "Not logged in: no token, or one that is unknown, expired or revoked."),
        (403, "Your roles or grants do not allow this."),
        (404, "No such thing, or none you may see."),
        (409, "In conflict with the current state."),
        (413, "The request body is too large."),
        (422, "The request is not valid."),
        (429, "A quota is used up: concurrent streams, downloads, login attempts, refused requests."),
        (503, "Temporarily unavailable."),
    )
}


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class BodyLimit:
    """Refuse request bodies over the limit (413 ``body_too_large``) before the application sees them.

    A declared ``Content-Length`` is judged at once (the server enforces the framing). A streamed (chunked) body is
    read here, at most the limit plus one chunk, and handed on whole: the framework turns any error raised while it
    reads a body into a generic 400, so the limit must be decided before it starts.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) <= self.limit:
                await self.app(scope, receive, send)
            else:
                await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before its body was complete
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # later calls wait for the disconnect, as a streaming response needs
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            error_body("body_too_large", f"request bodies are limited to {self.limit} bytes"), status_code=413
        )
        await response(scope, receive, send)


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Export bundles are made by a background thread of the API process (api.export_jobs)."""
    from starlette.concurrency import run_in_threadpool

    from api.export_jobs import ExportRunner

    runner = ExportRunner(app.state.services)
    gate = app.state.services.job_gate
    if gate is not None:
        runner.gate = lambda: gate("exports")
    runner.start()
    app.state.export_runner = runner
    housekeeping = denials.Housekeeping(app.state.services)  # denial summaries (api.denials)
    housekeeping.start()
    app.state.denial_housekeeping = housekeeping
    from api.footage import SessionHousekeeping

    sessions = SessionHousekeeping(app.state.services)  # idle playback sessions' ends (api.footage)
    sessions.start()
    app.state.session_housekeeping = sessions
    try:
        yield
    finally:
        await run_in_threadpool(runner.stop)
        await run_in_threadpool(housekeeping.close)
        await run_in_threadpool(sessions.close)


def create_app(services: Services) -> FastAPI:
    from api import webconsole
    from api.routes import alerts as alert_routes
    from api.routes import audit as audit_routes
    from api.routes import (
        auth,
        cameras,
        capacity,
        exports,
        footage,
        grants,
        holds,
        integrity,
        live,
        locks,
        policies,
        requests,
        system,
        users,
    )
    from api.routes import oidc as oidc_routes
    from api.routes.schemas import refuse_bad_text

    app = FastAPI(
        title="NVR archive API",
        version="1",
        description="Evidence-grade NVR: cameras, grants, playback and the audit trail. Every footage access is "
        "checked against a grant and written to a tamper-evident audit log.",
        openapi_url=f"{PREFIX}/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        responses=ERROR_RESPONSES,
        lifespan=_lifespan,
        dependencies=[Depends(refuse_bad_text)],  # no NUL or lone surrogate in any path or query (api.routes.schemas)
    )
    app.state.services = services
    app.add_middleware(BodyLimit, limit=services.settings.api_max_body_bytes)
    for module in (auth, users, cameras, grants, requests, footage, audit_routes, policies, holds, capacity, system):
        app.include_router(module.router, prefix=PREFIX)
    for module in (exports, integrity, alert_routes, oidc_routes, live):
        app.include_router(module.router, prefix=PREFIX)
    app.include_router(locks.router, prefix=PREFIX)
    webconsole.mount(app)  # the web console at / (static files; a client of the API above)

    @app.middleware("http")
    async def _request_id(request: Request, call_next):  # type: ignore[no-untyped-def]
        rid = request_id(request)
        response = await call_next(request)
        response.headers["X-Request-Id"] = rid
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")  # ticket URLs must not leak to other sites
        return response

    @app.exception_handler(NvrError)
    async def _nvr_error(request: Request, exc: NvrError) -> JSONResponse:
        retry_after = getattr(exc, "retry_after_s", None)  # api.throttle.LoginLocked
        status = getattr(exc, "http_status", None) or STATUS.get(exc.kind, 400)  # api.footage.RangeRefused: 416
        response = await _refuse(request, status, exc.code, exc.message, retry_after)
        response.headers.update(getattr(exc, "http_headers", {}))  # 416's Content-Range: bytes */<total>
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors()[:5]:
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "request"
            parts.append(f"{where}: {e.get('msg', 'invalid')}")
        return await _refuse(request, 422, "request_invalid", "; ".join(parts) or "the request is not valid")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        message = exc.detail if isinstance(exc.detail, str) else code
        return await _refuse(request, exc.status_code, code, message)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if getattr(request.state, "stream_started", False):
            # A playback stream ended short of its Content-Length (a damaged segment, a revoked grant): it wrote its
            # own end event and the client has its answer; nothing more to audit or send.
            log.warning("%s %s: the stream ended early (%s)", request.method, request.url.path, exc)
            return JSONResponse({}, status_code=500)
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return await _refuse(request, 500, "internal_error", "the server failed; the request id names it in the log")

    return app


def _best_effort_time(value: object) -> int | None:
    """A denial's window as far as it is a sane time (nvr.clock's range), else None: a refused request must never
    store a value that a later read of the trail could choke on."""
    if isinstance(value, str) and value:
        try:
            return parse_iso(value)
        except NvrError:
            return None
    return sane(value)


async def _refuse(
    request: Request, status: int, code: str, message: str, retry_after_s: int | None = None
) -> JSONResponse:
    from starlette.concurrency import run_in_threadpool

    if (request.url.path.startswith(PREFIX) and status != 404) or getattr(request.state, "audit_hint", None):
        try:
            verdict = await run_in_threadpool(_record_denial, request, status, code)
        except Exception:
            # The answer still goes out; the failure to audit is loud in the log.
            log.exception("could not write the audit event for a refused request (%s)", code)
            verdict = None
        if verdict is not None and verdict.rate_limited:  # api.denials: too many refusals from this address
            status, code, retry_after_s = 429, "rate_limited", verdict.retry_after_s
            message = f"too many refused requests from this address; try again in {retry_after_s} s"
    headers = {"X-Request-Id": request_id(request)}
    if retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    if status == 401:  # RFC 6750: no error attribute when no credentials came
        headers["WWW-Authenticate"] = (
            'Bearer realm="nvr"'
            if code == "auth_required"
            else f'Bearer realm="nvr", error="invalid_token", error_description="{code}"'
        )
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def _record_denial(request: Request, status: int, code: str) -> denials.Verdict | None:
    """The denial event; a 4xx of a request without a valid credential is counted by api.denials instead (its own
    event only if it is the first of its bucket) unless the route asked for one event each (``audit_each``)."""
    services: Services = request.app.state.services
    hint = request_hint(request)
    principal = getattr(request.state, "principal", None)
    q = request.query_params
    ev = audit.Event(
        action=str(hint.get("action") or f"{request.method.lower()} {request.url.path}")[:64],  # the column's width
        outcome="failed" if status >= 500 else "denied",
        camera_id=hint.get("camera_id"),
        window_start_us=_best_effort_time(hint.get("window_start_us", q.get("start"))),
        window_end_us=_best_effort_time(hint.get("window_end_us", q.get("end"))),
        object_id=hint.get("object_id"),
        purpose=hint.get("purpose", q.get("purpose")),
        case_ref=hint.get("case_ref"),
        destination=hint.get("destination"),
        reason=code,
    )
    # A user refused at authentication (roles edited into a forbidden combination) is named, one event each.
    named: audit.Actor | None = principal.actor if principal is not None else hint.get("denial_actor")
    actor = named if named is not None else audit.ANONYMOUS
    with services.db.session() as s:
        if named is None and 400 <= status < 500 and not hint.get("audit_each"):
            return denials.refused(s, services.settings, services.now_us(), request_meta(request), ev)
        alerts.record(s, services.settings, services.now_us(), actor, request_meta(request), ev)  # api.alerts
    return None
