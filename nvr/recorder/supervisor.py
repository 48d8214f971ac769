"""Runs one worker thread per active camera and keeps that set in step with the registry.

PyAV releases the GIL while it demuxes and while FFmpeg writes, so threads (not processes) are enough, and a
worker's memory is a few MB instead of a process's tens (figures in docs/performance.md). Start-up recovery runs
before any worker, so a camera's chain has one writer.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from sqlalchemy import select

from nvr.cluster import NodeLost
from nvr.models import Camera
from nvr.recorder.context import RecorderContext
from nvr.recorder.recovery import recover_all, recover_journal
from nvr.recorder.worker import HEARTBEAT_S, CameraWorker

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self, ctx: RecorderContext, sync_seconds: float = 2.0) -> None:
        self.ctx = ctx
        if ctx.membership is not None:  # renew well within the lease: four chances before it expires
            sync_seconds = min(sync_seconds, ctx.membership.timeout_us / 4e6)
        self.sync_seconds = sync_seconds
        self.workers: dict[str, CameraWorker] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live_attached = False
        self._orphans: list[Path] = []
        """Journals a stopped worker could not register (the database was away): retried at every sync, in order."""

    def start(self) -> None:
        """Join the cluster (refused: ``node_id_in_use``, ``cluster_needs_postgresql``, ``node_clock_skew``), then
        recover what a crash left, then record this node's share of the cameras."""
        if self.ctx.membership is not None:
            self.ctx.membership.join()
        recover_all(self.ctx)
        if self.ctx.live is not None:
            self.ctx.live.attach_recorder()  # this process now serves live view (the API's live_unavailable test)
            self._live_attached = True
        self.sync()
        self._thread = threading.Thread(target=self._loop, name="rec-supervisor", daemon=True)
        self._thread.start()

    def sync(self) -> None:
        """Start workers for the active cameras this node holds leases for (all of them without a cluster); stop
        those suspended, decommissioned, moved to another node or whose URL changed. A camera this node is to hand
        over is released only after its worker stopped, so its last segment is registered under the lease."""
        m = self.ctx.membership
        fences: dict[str, tuple[str, int] | None]
        give_back: set[str] = set()
        if m is not None:
            m.heartbeat(len(self.workers))
            leases = m.sync_cameras()
            fences = {c: (m.node.id, t) for c, t in leases.record.items()}
            give_back = leases.give_back
        with self.ctx.db.session() as s:
            wanted = {c.id: c.stream_url for c in s.scalars(select(Camera).where(Camera.state == "active"))}
        if m is not None:
            wanted = {c: u for c, u in wanted.items() if c in fences}
        else:
            fences = dict.fromkeys(wanted)
        for cam_id, worker in list(self.workers.items()):
            if (
                cam_id not in wanted
                or wanted[cam_id] != worker.url
                or fences.get(cam_id) != worker.fence
                or not worker.is_alive()
            ):
                worker.stop()
                worker.join()
                self._orphans += worker.pending_journals()
                del self.workers[cam_id]
        self._drain_orphans()
        if m is not None and give_back:
            m.release(give_back - set(self.workers))
            log.info("handed over camera(s) %s", ", ".join(sorted(give_back)))
        for cam_id, url in wanted.items():
            if cam_id not in self.workers:
                w = CameraWorker(self.ctx, cam_id, url, fences.get(cam_id))
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
            except NodeLost as exc:
                log.error("%s", exc.message)
                self._stop_workers()
                return
            except Exception:
                log.exception("supervisor sync failed; retrying")

    def _drain_orphans(self) -> None:
        """Register (or fence, if the camera's lease moved) what stopped workers left unregistered."""
        while self._orphans:
            journal = self._orphans[0]
            if journal.exists():
                try:
                    recover_journal(self.ctx, journal)
                except Exception as exc:
                    log.warning("journal %s not registered yet (%s); retrying at the next sync", journal, exc)
                    return
            self._orphans.pop(0)

    def _stop_workers(self) -> None:
        for w in self.workers.values():
            w.stop()
        for w in self.workers.values():
            w.join()
            self._orphans += w.pending_journals()
        self.workers.clear()
        try:
            self._drain_orphans()
        except Exception:
            log.exception("could not register what the stopped workers left; start-up recovery will")

    def stop(self) -> None:
        """Finish every open segment (each becomes a row) and stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._stop_workers()
        if self.ctx.membership is not None:
            try:
                self.ctx.membership.leave()  # hand every lease over at once
            except Exception:
                log.exception("could not hand the leases over; they expire after the lease timeout")
        if self.ctx.live is not None and self._live_attached:
            self._live_attached = False
            self.ctx.live.detach_recorder()
