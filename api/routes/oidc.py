"""Signing in through the organisation's identity provider (OpenID Connect; api.oidc, docs/oidc.md)."""

from __future__ import annotations

import html
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from api import oidc
from api.app import STATUS, error_body
from api.context import Ctx, anonymous, request_id
from nvr.clock import iso

router = APIRouter(tags=["auth"])
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>Signed in</title></head>
<body><h1 id="signed-in">Signed in as {name} ({username})</h1>
<p>Unit {unit}, staff number {staff}; roles {roles}. This session ends at {expires} at the latest.</p>
<p><a id="continue" href="{target}">Continue</a></p>{script}
</body></html>
"""


@router.get(
    "/auth/oidc/login",
    status_code=303,
    response_class=RedirectResponse,
    responses={303: {"description": "To the identity provider's sign-in page."}},
)
def oidc_login(
    ctx: Annotated[Ctx, Depends(anonymous("auth.oidc.begin"))],
    return_to: Annotated[str | None, Query(max_length=500)] = None,
) -> RedirectResponse:
    """Begin a browser sign-in at the identity provider (authorization code with PKCE). ``return_to``: a path on
    this server to open once signed in. 404 ``oidc_not_configured`` when no provider is configured."""
    start = oidc.begin_login(ctx.services, ctx.meta, return_to)
    response = RedirectResponse(start.redirect_to, status_code=303)
    response.set_cookie(
        start.cookie_name,
        start.cookie_value,
        max_age=oidc.LOGIN_STATE_SECONDS,
        path="/api/v1/auth/oidc",
        secure=oidc.cookies_secure(ctx.settings),
        httponly=True,
        samesite="lax",  # it must come back with the provider's redirect, a cross-site navigation
    )
    return response


@router.get(
    "/auth/oidc/callback",
    response_model=None,
    # The page is HTML; refusals are the API's JSON error bodies (a response_class would document those as HTML).
    responses={200: {"description": "Signed in: the session cookie is set.", "content": {"text/html": {}}}},
)
def oidc_callback(
    request: Request,
    ctx: Annotated[Ctx, Depends(anonymous("auth.oidc.login"))],
    code: Annotated[str | None, Query(max_length=2048)] = None,
    state: Annotated[str | None, Query(max_length=200)] = None,
    iss: Annotated[str | None, Query(max_length=500)] = None,
    error: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """Where the identity provider sends the browser back. On success the answer sets the session cookie
    (``__Host-nvr_session`` over HTTPS, ``nvr_session`` on /api/v1 over HTTP; HttpOnly, SameSite=Strict) and shows
    who signed in; it opens ``return_to`` when the login named one."""
    params = {"code": code, "state": state, "iss": iss, "error": error}
    cookie = oidc.login_cookie_name(state) if state else None
    try:
        done = oidc.complete_login(ctx.services, ctx.meta, params, request.cookies.get(cookie) if cookie else None)
    except oidc.LoginRefused as exc:  # its denial is recorded, with the person as actor
        refused = JSONResponse(
            error_body(exc.code, exc.message),
            status_code=STATUS.get(exc.kind, 400),
            headers={"X-Request-Id": request_id(request)},
        )
        if cookie:
            refused.delete_cookie(cookie, path="/api/v1/auth/oidc")
        return refused
    u = done.user
    target = done.return_to or "/api/v1/me"
    page = _PAGE.format(
        name=html.escape(u.full_name),
        username=html.escape(u.username),
        unit=html.escape(u.unit),
        staff=html.escape(u.staff_number),
        roles=html.escape(u.roles.replace(",", ", ")),
        expires=html.escape(iso(done.token.expires_us) or ""),
        target=html.escape(target, quote=True),
        # A navigation this page starts is same-site, so the SameSite=Strict cookie goes with it.
        script="<script>location.replace(document.getElementById('continue').href)</script>" if done.return_to else "",
    )
    response = HTMLResponse(page)
    name, path = oidc.session_cookie_name(ctx.settings)
    response.set_cookie(
        name,
        done.secret,
        max_age=max(1, (done.token.expires_us - ctx.now_us) // 1_000_000),
        path=path,
        secure=oidc.cookies_secure(ctx.settings),
        httponly=True,
        samesite="strict",
    )
    if cookie:
        response.delete_cookie(cookie, path="/api/v1/auth/oidc")
    return response
