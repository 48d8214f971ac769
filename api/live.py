"""Live view: the checks that start a live stream, the re-checks while it runs, and its end event.

A live stream is served from the recorder that is already connected to the camera (nvr.recorder.live): the API
never opens a connection of its own, so it can only serve cameras recorded by this very process (``nvr serve`` or
``nvr record`` beside the API; an ``nvr api`` process answers 503 ``live_unavailable``).

Starting (:func:`start`), in this order: the grant (``grants.authorize`` with action ``live`` over the instant now,
so its footage window must cover the present), read-only so that nothing below tells a user without a grant whether
a camera is recording; that this process records the camera (409 ``camera_not_recording``, also when no keyframe
comes within ``live_start_seconds``); then, in one transaction, the grant again, the stream counted against its
``max_streams`` by a read pin whose window is the single instant now (it pins no footage; 429 ``stream_limit``) and
``live.start``. The viewer is attached before that transaction (the response's headers need the init segment's
codecs), and detached if the transaction refuses.

While it runs (:class:`LiveStream`), about once a second: the grant's state and validity, its footage window still
covering now, the user and the token (``grants.still_allowed`` and ``grants.window_covers``, as a playback stream
does); the read pin's heartbeat every 5 s. Whatever ends it, ``live.end`` is written with the bytes sent, the
stream's span as its window (start → end: the duration) and the reason, shielded from the request's cancellation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import anyio
from sqlalchemy.orm import Session
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api import audit, footage, grants
from api.context import Ctx, Services
from nvr import cluster
from nvr.errors import Kind, NvrError
from nvr.models import Grant, Node
from nvr.recorder import live
from nvr.recorder.live import LiveFeed, Viewer
from storage import pins

log = logging.getLogger(__name__)
RECHECK_SECONDS = 1.0
HEARTBEAT_SECONDS = 5.0


@dataclass
class LiveJob:
    services: Services
    feed: LiveFeed
    viewer: Viewer
    pin_id: int
    grant_id: int
    token_id: int | None
    actor: audit.Actor
    meta: audit.RequestMeta
    end_event: audit.Event
    started_us: int


def _authorize(ctx: Ctx, s: Session, camera_id: str, now: int) -> Grant:
    """A grant with ``live`` naming the camera, in force now, whose footage window covers now."""
    return grants.authorize(s, ctx.me, camera_id, "live", now, now + 1, now)


def _feed(ctx: Ctx, camera_id: str) -> LiveFeed:
    hub = ctx.services.live
    if not hub.has_recorder:
        raise NvrError(
            Kind.UNAVAILABLE,
            "live_unavailable",
            "this server process does not record, and live view is served by the process that does "
            "(nvr serve or nvr record beside the API)",
        )
    feed = hub.feed(camera_id)
    if feed is None:
        other = _holder_elsewhere(ctx, camera_id)
        if other is not None:
            node_id, url = other
            where = f" at {url}" if url else ""
            raise NvrError(
                Kind.FAILED_PRECONDITION,
                "live_on_other_node",
                f"camera {camera_id} is recorded by node {node_id}{where}; live view is served by that node",
            )
        raise NvrError(
            Kind.FAILED_PRECONDITION, "camera_not_recording", "the camera is not recording now; try again later"
        )
    return feed


def _holder_elsewhere(ctx: Ctx, camera_id: str) -> tuple[str, str | None] | None:
    """(node id, API URL) of another node holding the camera's lease now (nvr.cluster), if one does."""
    with ctx.db.session() as s:
        now = cluster.db_now_us(s, ctx.services.clock.now_us)
        holder = cluster.held_by(s, cluster.camera_resource(camera_id), now)
        if holder is None or holder == (ctx.settings.node_id or cluster.default_node_id()):
            return None
        node = s.get(Node, holder)
        return holder, None if node is None else node.api_url


def _wait_init(viewer: Viewer, timeout_s: float) -> None:
    """Until the feed's muxer has started at a keyframe (the init segment is there), or the viewer ended."""
    deadline = time.monotonic() + timeout_s
    while viewer.init is None and viewer.ended is None:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        viewer.wait(min(left, 0.25))
    if viewer.init is None:
        raise NvrError(
            Kind.FAILED_PRECONDITION,
            "camera_not_recording",
            f"the camera sent no picture to start a live stream from ({viewer.ended or 'no keyframe in time'})",
        )


def start(ctx: Ctx, camera_id: str, purpose: str) -> LiveJob:
    """The checks of a live start (module docstring); the job for :class:`LiveStream`."""
    now = ctx.now_us
    with ctx.db.session() as s:
        g = _authorize(ctx, s, camera_id, now)
    ctx.hint(case_ref=g.case_ref, object_id=f"grant:{g.id}")
    feed = _feed(ctx, camera_id)
    viewer = feed.add_viewer()
    try:
        _wait_init(viewer, ctx.settings.live_start_seconds)
        now = ctx.now_us
        meta = ctx.meta
        with ctx.db.session() as s:
            g = _authorize(ctx, s, camera_id, now)
            pin = footage.pin(s, ctx.me, g, camera_id, now, now, now, meta.request_id or "")
            begun = _event("live.start", "allowed", camera_id, g, purpose)
            begun.window_start_us = begun.window_end_us = now
            ctx.record(s, begun)
    except BaseException:
        feed.remove_viewer(viewer)
        raise
    return LiveJob(
        services=ctx.services,
        feed=feed,
        viewer=viewer,
        pin_id=pin.id,
        grant_id=g.id,
        token_id=pin.token_id,
        actor=ctx.actor,
        meta=meta,
        end_event=_event("live.end", "ok", camera_id, g, purpose),
        started_us=now,
    )


def _event(action: str, outcome: str, camera_id: str, g: Grant, purpose: str) -> audit.Event:
    return audit.Event(
        action, outcome, camera_id=camera_id, object_id=f"grant:{g.id}", purpose=purpose, case_ref=g.case_ref
    )


def codecs(job: LiveJob) -> str:
    assert job.viewer.init is not None  # start() waited for it
    return live.codecs_of(job.viewer.init.data)


# --- while it runs ----------------------------------------------------------------------------------------------
def recheck(job: LiveJob, beat: bool) -> str | None:
    """None while the stream may go on, else why it must end (``grant_suspended``, ``outside_grant_window``, …)."""
    svc = job.services
    now = svc.now_us()
    with svc.db.session() as s:
        reason = grants.still_allowed(s, job.grant_id, job.token_id, now)
        if reason is None:
            g = s.get(Grant, job.grant_id)
            if g is None or not grants.window_covers(g, now, now + 1, now):
                reason = "outside_grant_window"
        if reason is None and beat:
            pins.heartbeat(s, job.pin_id, now)
    return reason


OUTCOMES = {
    live.CLIENT_CLOSED: "ok",  # the viewer closed the view: the ordinary end of a live stream
    live.LIVE_FAILED: "failed",
}


def finish(job: LiveJob, reason: str, sent: int) -> None:
    """``live.end`` (bytes, the stream's span as its window, the reason) and the pin's release, in one transaction."""
    svc = job.services
    job.feed.remove_viewer(job.viewer, reason)
    ev = job.end_event
    ev.outcome = OUTCOMES.get(reason, "terminated")
    ev.reason, ev.bytes = reason, sent
    try:
        with svc.db.session() as s:
            pins.unpin(s, job.pin_id)
            now = svc.now_us()
            ev.window_start_us, ev.window_end_us = job.started_us, max(now, job.started_us)
            audit.record(s, now, job.actor, job.meta, ev)
    except Exception:
        log.exception("could not record the end of a live stream (pin %d, %d bytes sent)", job.pin_id, sent)


class LiveStream(Response):
    """The chunked ``video/mp4`` body: the init segment, then fragments as the recorder writes them, until the
    client leaves, the grant no longer allows it, the viewer falls too far behind or the camera's run ends."""

    def __init__(self, job: LiveJob, headers: dict[str, str]) -> None:
        super().__init__(content=None, media_type="video/mp4", headers=headers)
        self.job = job
        # No Content-Length: a live stream has no end it could announce (uvicorn then sends it chunked).
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        job = self.job
        viewer = job.viewer
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()
        dropped = asyncio.Event()

        def poke() -> None:
            changed.set()
            if viewer.ended == live.VIEWER_TOO_SLOW:
                dropped.set()

        def wake() -> None:  # from the recorder's thread
            loop.call_soon_threadsafe(poke)

        viewer.wake = wake
        sent = 0
        reason = live.CLIENT_CLOSED
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            scope.setdefault("state", {})["stream_started"] = True  # api.app: never audited as a failed start
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                async def on_drop() -> None:
                    # A viewer that stops reading blocks in send(); its queue fills and the hub drops it: stop here.
                    await dropped.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(watch)
                tg.start_soon(on_drop)
                assert viewer.init is not None
                await send({"type": "http.response.body", "body": viewer.init.data, "more_body": True})
                sent += len(viewer.init.data)
                last_check = last_beat = time.monotonic()
                while True:
                    items, ended = viewer.take()
                    if items:  # one write for everything queued: a viewer that fell behind catches up in one go
                        body = items[0].data if len(items) == 1 else b"".join(f.data for f in items)
                        await send({"type": "http.response.body", "body": body, "more_body": True})
                        sent += len(body)
                    if ended is not None:
                        reason = ended
                        break
                    now = time.monotonic()
                    if now - last_check >= RECHECK_SECONDS:
                        beat = now - last_beat >= HEARTBEAT_SECONDS
                        why = await anyio.to_thread.run_sync(recheck, job, beat)
                        last_check = now
                        last_beat = now if beat else last_beat
                        if why is not None:
                            reason = why
                            break
                    with anyio.move_on_after(max(0.0, RECHECK_SECONDS - (time.monotonic() - last_check))):
                        await changed.wait()
                    changed.clear()  # after the wait, before the next take(): a fragment queued meanwhile is taken
                # An end the server decided: the body ends properly (the last chunk), so the client knows it is over
                # rather than cut off; reconnecting tells it why (403 grant_suspended, 409 camera_not_recording…).
                if reason != live.VIEWER_TOO_SLOW:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                tg.cancel_scope.cancel()
            if dropped.is_set():
                reason = live.VIEWER_TOO_SLOW
        except OSError:
            reason = live.CLIENT_CLOSED
        except Exception:
            log.exception("live stream failed")
            reason = live.LIVE_FAILED
        finally:
            viewer.wake = None
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(finish, job, reason, sent)
