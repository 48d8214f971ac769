"""Live view: the camera's current fragments as one chunked fragmented-MP4 stream (api.live, docs/live.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from api import live
from api.context import Ctx, requires
from nvr import registry

router = APIRouter(tags=["live"])
Purpose = Annotated[str, Query(min_length=1, max_length=2000, description="Why you need to watch (audited).")]


@router.get(
    "/cameras/{camera_id}/live",
    response_class=live.LiveStream,
    status_code=200,  # LiveStream.__init__ has no status_code for FastAPI to infer it from
    responses={200: {"content": {"video/mp4": {}}, "description": "Fragmented MP4, chunked, from a keyframe."}},
)
def live_view(
    camera_id: str, purpose: Purpose, ctx: Annotated[Ctx, Depends(requires("live.start"))]
) -> live.LiveStream:
    """Watch the camera now: the init segment (``ftyp`` + ``moov``), then one ``moof`` + ``mdat`` fragment per frame
    as the recorder receives it, from the recorder's own connection to the camera (never a second one). The MSE
    codecs string is in ``X-Nvr-Codecs``. Needs a grant with ``live`` whose footage window covers now; counts against
    the grant's concurrent streams (429 ``stream_limit``). 409 ``camera_not_recording`` when this server is not
    recording the camera; 503 ``live_unavailable`` from a process that records nothing (``nvr api``).

    Re-checked about once a second: a grant suspended, revoked or expired, a logout or a disabled user ends the
    stream (the body ends; ``live.end`` in the audit trail says why), as does a viewer that falls too far behind
    (``viewer_too_slow``) or the camera disconnecting (``camera_disconnected``: reconnect)."""
    registry.validate_id(camera_id)
    ctx.hint(purpose=purpose)
    job = live.start(ctx, camera_id, purpose)
    headers = {"X-Nvr-Codecs": live.codecs(job), "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return live.LiveStream(job, headers)
