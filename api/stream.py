"""Sending a playback stream, and ending it when access ends.

The response is a raw ASGI response so that its end is under our control whatever happens: it re-checks the grant,
the token and the user about once a second while it sends (a suspension, revocation or disabled account ends the
stream within a second, by closing the connection short of its Content-Length so the client can tell), refreshes
its read pin, notices a client that went away, and always writes the ``playback.end`` event with the bytes sent and
removes the pin, in a transaction the request's cancellation cannot interrupt. A request of a playback session
(HTTP Range, api.footage) adds its bytes to the session instead; the session writes the one ``playback.end``.

Integrity: the chunks come from ``storage.reader``, which reads each segment whole, hashes it against its row and
sends it from that buffer. When a segment after the first fails (the first one was checked before the response
started, see api/routes/footage.py), the reader yields the rest of the segments before it and raises
``SegmentDamaged``: the stream stops there, short of its Content-Length, with none of that segment's bytes sent
(HTTP/1.1 with a Content-Length has no way to say why in-band, and uvicorn sends no trailers). The same transaction
then opens an integrity finding, writes ``playback.damaged`` and ends with ``playback.end`` ``failed``, reason
``segment_damaged camera … seq …: …``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api import audit, footage, grants
from api.context import Services
from storage import pins
from storage.reader import PlaybackStopped, SegmentDamaged

log = logging.getLogger(__name__)
RECHECK_SECONDS = 1.0
HEARTBEAT_SECONDS = 5.0


@dataclass
class StreamJob:
    services: Services
    chunks: Iterator[bytes]
    pin_id: int
    grant_id: int
    token_id: int | None
    actor: audit.Actor
    meta: audit.RequestMeta
    end_event: audit.Event
    stop: threading.Event | None = None
    """Set when the client has gone: the reader (``start_playback(..., stop=stop.is_set)``) stops hashing then."""
    session: bool = False
    """One request of a playback session (api.footage): its end adds its bytes to the session, which writes
    ``playback.end`` once it closes, instead of a ``playback.end`` of its own."""


class PlaybackStream(Response):
    def __init__(self, job: StreamJob, headers: dict[str, str], total_bytes: int, status_code: int = 200) -> None:
        super().__init__(
            content=None,
            status_code=status_code,
            media_type="video/mp4",
            headers={**headers, "Content-Length": str(total_bytes)},
        )
        self.job = job
        self.total_bytes = total_bytes  # of this response (a range's length for a 206)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        job = self.job
        sent = 0
        outcome, reason = "ok", None
        damage: SegmentDamaged | None = None
        complete = False
        gone = anyio.Event()
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            # The stream audits its own end; an error the server raises after this (a body cut short of its
            # Content-Length on purpose) must not be audited a second time as a failed start (api.app).
            scope.setdefault("state", {})["stream_started"] = True
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    while True:
                        message = await receive()
                        if message["type"] == "http.disconnect":
                            if job.stop is not None:
                                job.stop.set()  # the worker thread may be reading and hashing the next segment
                            gone.set()
                            tg.cancel_scope.cancel()
                            return

                tg.start_soon(watch)
                last_check = last_beat = time.monotonic()
                while True:
                    try:
                        chunk = await anyio.to_thread.run_sync(_next, job.chunks)
                    except PlaybackStopped:  # only after a disconnect: stop.set() comes with gone.set()
                        outcome, reason = "terminated", "client_closed"
                        break
                    except SegmentDamaged as exc:
                        # Every byte before that segment is out (the reader yielded them first); none of it is.
                        log.error("playback stream stopped before a damaged segment: %s", exc)
                        damage = exc
                        outcome, reason = "failed", footage.damage_reason(_camera(job), exc)
                        break
                    if chunk is None:
                        break
                    now = time.monotonic()
                    if now - last_check >= RECHECK_SECONDS:
                        beat = now - last_beat >= HEARTBEAT_SECONDS
                        reason = await anyio.to_thread.run_sync(_recheck, job, beat)
                        last_check = now
                        last_beat = now if beat else last_beat
                        if reason is not None:
                            outcome = "terminated"
                            break
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    sent += len(chunk)
                if outcome == "ok":
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    complete = True
                tg.cancel_scope.cancel()
            # Once the response is complete the server reports a disconnect at once, and a client that has every byte
            # of the Content-Length may hang up before the closing message: neither is a client leaving early.
            if gone.is_set() and outcome == "ok" and not complete and sent < self.total_bytes:
                outcome, reason = "terminated", "client_closed"
        except OSError:
            outcome, reason = "terminated", "client_closed"
        except Exception as exc:
            # Anything else (a bug, a database failure while re-checking): stop, say so in the audit, log it.
            log.exception("playback stream failed")
            leaf = _leaf(exc)
            outcome, reason = "failed", getattr(leaf, "code", leaf.__class__.__name__)
        finally:
            close = getattr(job.chunks, "close", None)
            if close is not None:
                close()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_finish, job, outcome, reason, sent, damage)


def _next(chunks: Iterator[bytes]) -> bytes | None:
    return next(chunks, None)


def _camera(job: StreamJob) -> str:
    return job.end_event.camera_id or ""


def _leaf(exc: BaseException) -> BaseException:
    """The first real exception inside the task group's ExceptionGroup (anyio wraps what the body raises)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _recheck(job: StreamJob, beat: bool) -> str | None:
    svc = job.services
    now = svc.now_us()  # an access decision: a clock set back does not keep a stream of an expired grant running
    with svc.db.session() as s:
        reason = grants.still_allowed(s, job.grant_id, job.token_id, now)
        if reason is None and beat:
            pins.heartbeat(s, job.pin_id, now)
    return reason


def _finish(job: StreamJob, outcome: str, reason: str | None, sent: int, damage: SegmentDamaged | None) -> None:
    svc = job.services
    ev = job.end_event
    ev.outcome, ev.reason, ev.bytes = outcome, reason, sent
    try:
        if job.session:
            _leave(job, outcome, reason, sent, damage)
            return
        with svc.db.session() as s:
            pins.unpin(s, job.pin_id)
            now = svc.clock.now_us()
            if damage is not None:
                footage.record_damage(s, now, job.actor, job.meta, _camera(job), damage, ev.purpose, ev.case_ref)
            audit.record(s, now, job.actor, job.meta, ev)
    except Exception:
        log.exception("could not record the end of a playback stream (pin %d, %d bytes sent)", job.pin_id, sent)


def _leave(job: StreamJob, outcome: str, reason: str | None, sent: int, damage: SegmentDamaged | None) -> None:
    """A session request's end: its bytes go to the session. A client that went away is a player seeking (the
    session goes on); a grant that stopped holding, a damaged segment or a failure ends the session, which closes
    (``playback.end``) when its last running request is over. The damage's finding goes in the same transaction."""
    svc = job.services
    end = None if outcome == "ok" or reason == "client_closed" or reason is None else (outcome, reason)
    now = svc.now_us()
    with svc.db.session() as s:
        idle_s = svc.settings.playback_session_idle_seconds
        if footage.leave_session(s, job.pin_id, sent, True, end, now, idle_s):
            footage.close_session(s, job.pin_id, footage.closing_now(), now)
        if damage is not None:
            ev = job.end_event
            footage.record_damage(s, now, job.actor, job.meta, _camera(job), damage, ev.purpose, ev.case_ref)
