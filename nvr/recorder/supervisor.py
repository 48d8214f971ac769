"""Runs one worker thread per active camera and keeps that set in step with the registry.

PyAV releases the GIL while it demuxes and while FFmpeg writes, so threads (not processes) are enough, and a
worker's memory is a few MB instead of a process's tens (figures in docs/performance.md). Start-up recovery runs
before any worker, so a camera's chain has one writer.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import select

from nvr.models import Camera
from nvr.recorder.context import RecorderContext
from nvr.recorder.recovery import recover_all
from nvr.recorder.worker import HEARTBEAT_S, CameraWorker

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self, ctx: RecorderContext, sync_seconds: float = 2.0) -> None:
        self.ctx = ctx
        self.sync_seconds = sync_seconds
        self.workers: dict[str, CameraWorker] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live_attached = False

    def start(self) -> None:
        recover_all(self.ctx)
        if self.ctx.live is not None:
            self.ctx.live.attach_recorder()  # this process now serves live view (the API's live_unavailable test)
            self._live_attached = True
        self.sync()
        self._thread = threading.Thread(target=self._loop, name="rec-supervisor", daemon=True)
        self._thread.start()

    def sync(self) -> None:
        """Start workers for newly active cameras; stop those suspended, decommissioned or whose URL changed."""
        with self.ctx.db.session() as s:
            wanted = {c.id: c.stream_url for c in s.scalars(select(Camera).where(Camera.state == "active"))}
        for cam_id, worker in list(self.workers.items()):
            if cam_id not in wanted or wanted[cam_id] != worker.url or not worker.is_alive():
                worker.stop()
                worker.join()
                del self.workers[cam_id]
        for cam_id, url in wanted.items():
            if cam_id not in self.workers:
                w = CameraWorker(self.ctx, cam_id, url)
                self.workers[cam_id] = w
                w.start()
                log.info("recording camera %s", cam_id)

    def _loop(self) -> None:
        beat = 0.0
        while not self._stop.wait(self.sync_seconds):
            try:
                self.sync()
                beat += self.sync_seconds
                if beat >= HEARTBEAT_S:
                    beat = 0.0
                    # One transaction for every live worker: a per-camera heartbeat commit cost more CPU than
                    # the camera's remuxing at 64 cameras (docs/performance.md).
                    self.ctx.heartbeat([c for c, w in self.workers.items() if w.is_alive()])
            except Exception:
                log.exception("supervisor sync failed; retrying")

    def stop(self) -> None:
        """Finish every open segment (each becomes a row) and stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for w in self.workers.values():
            w.stop()
        for w in self.workers.values():
            w.join()
        self.workers.clear()
        if self.ctx.live is not None and self._live_attached:
            self._live_attached = False
            self.ctx.live.detach_recorder()
