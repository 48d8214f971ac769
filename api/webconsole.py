"""The web console: static files (plain ES modules, no build step) served at ``/`` by the same server as the API.

The console is a client of the public API like any other (api/console/api.js): it holds no privilege of its own,
and every screen's data comes from /api/v1 with the user's own token or session cookie, so the same grants,
refusals and audit events apply. What this module adds is only the files and the headers that keep them safe to
run: a Content-Security-Policy that allows scripts, styles and media from this origin alone (no inline script, no
eval, no third-party origin: an injected string in footage metadata cannot become code), ``frame-ancestors 'none'``
(no clickjacking of an approve button), ``nosniff`` and no referrer (ticket URLs carry a secret). Media may also come
from ``blob:`` (live view appends fragments to a MediaSource, whose URL is a blob URL). See docs/console.md.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

CONSOLE_DIR = Path(__file__).with_name("console")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Revalidated on every load: after an upgrade a browser never runs an old module beside a new one.
    "Cache-Control": "no-cache",
}


class _ConsoleFiles(StaticFiles):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = list(message.get("headers", []))
                raw = [(k, v) for k, v in raw if k.lower() != b"cache-control"]
                raw += [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]
                message["headers"] = raw
            await send(message)

        await super().__call__(scope, receive, with_headers)


def mount(app: FastAPI) -> None:
    """``/`` answers the console's page; ``/console/*`` its modules and stylesheet. Neither is in the OpenAPI
    document (they are not API operations)."""
    index = CONSOLE_DIR / "index.html"

    @app.get("/", include_in_schema=False)
    def console_index() -> Response:
        return FileResponse(index, media_type="text/html; charset=utf-8", headers=HEADERS)

    app.mount("/console", _ConsoleFiles(directory=CONSOLE_DIR), name="console")
