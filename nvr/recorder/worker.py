"""One camera's recorder: connect, copy packets into segments without decoding, reconnect with backoff.

Lifecycle of one connection (a "run"): open the RTSP input (TCP by default, socket timeout ``timeout`` in µs:
``stimeout`` no longer exists and FFmpeg silently ignores unknown options), check the streams, then for every
packet repair its timestamps and write it. The first segment of a run starts at the first video keyframe and is
anchored to the server wall clock at that packet's arrival; each later segment of the run continues exactly
where the previous one ended on the media clock, so a run is contiguous. ``demux()`` ending as at end of file is
a disconnect (that is all FFmpeg reports when the server goes away). Every outage becomes a gap row.
"""

from __future__ import annotations

import errno
import logging
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
from sqlalchemy import func, select
from sqlalchemy.exc import InterfaceError, OperationalError

from nvr.errors import Kind, NvrError
from nvr.models import CameraStateChange
from nvr.recorder.context import RecorderContext
from nvr.recorder.faults import CameraFault, classify
from nvr.recorder.live import CAMERA_DISCONNECTED, RECORDER_STOPPED, LiveFeed
from nvr.recorder.timestamps import StreamTimeline
from nvr.registry import redact_url
from retention import holds
from storage import catalog
from storage.volumes import free_bytes
from storage.writer import FinishedFile, SegmentWriter

log = logging.getLogger(__name__)

VIDEO_CODECS = ("h264", "hevc")
MP4_AUDIO = ("aac", "mp3", "opus", "ac3", "eac3", "alac", "flac", "pcm_s16le", "pcm_s16be")
# G.711 (common on cameras, mandatory in GB/T 28181) has no MP4 sample entry in FFmpeg; QuickTime holds it with
# the same fragmented layout, so such cameras are recorded as .mov instead of losing their audio.
MOV_AUDIO = ("pcm_alaw", "pcm_mulaw")
HEARTBEAT_S = 5.0
DB_AWAY = (OperationalError, InterfaceError)
"""What a database that went away (restarted, unreachable) raises; recording continues to journals meanwhile."""
# A run shorter than this does not reset the backoff: a camera that accepts and drops at once is still failing.
STABLE_RUN_S = 30.0


@dataclass
class _Open:
    writer: SegmentWriter
    first_dts: int
    """First video dts on the output timeline, in the video time base."""
    first_media_us: int
    frames: int = 0
    start_override: int | None = None
    """Set when the server clock stepped mid-segment: the start as dated before the step."""


def _disk_full(exc: BaseException, seg: _Open, min_free: int) -> bool:
    """ENOSPC may arrive wrapped by PyAV's I/O callback; the free space tells for sure."""
    chain: BaseException | None = exc
    while chain is not None:
        if getattr(chain, "errno", None) == errno.ENOSPC:
            return True
        chain = chain.__cause__ or chain.__context__
    try:
        return free_bytes(seg.writer.volume.path) < max(min_free, 1)
    except OSError:
        return False


def _annexb_parameter_sets(data: bytes, codec: str) -> bytes:
    """The SPS/PPS (H.264) or VPS/SPS/PPS (H.265) NAL units of an Annex-B keyframe, as Annex-B extradata."""
    wanted = {7, 8} if codec == "h264" else {32, 33, 34}
    out = bytearray()
    i, n = 0, len(data)
    starts = []
    while i < n - 3:
        if (
            data[i] == 0
            and data[i + 1] == 0
            and (data[i + 2] == 1 or (data[i + 2] == 0 and i + 3 < n and data[i + 3] == 1))
        ):
            sc = 3 if data[i + 2] == 1 else 4
            starts.append((i, i + sc))
            i += sc
        else:
            i += 1
    for k, (_, payload) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else n
        if payload >= n:
            continue
        nal_type = data[payload] & 0x1F if codec == "h264" else (data[payload] >> 1) & 0x3F
        if nal_type in wanted:
            out += b"\x00\x00\x00\x01" + data[payload:end]
    return bytes(out)


class CameraWorker(threading.Thread):
    def __init__(self, ctx: RecorderContext, camera_id: str, url: str, fence: tuple[str, int] | None = None) -> None:
        super().__init__(name=f"rec-{camera_id}", daemon=True)
        self.ctx = ctx
        self.camera_id = camera_id
        self.url = url
        self.fence = fence
        """(node id, lease token) this worker records the camera under (nvr.cluster); every segment row checks it."""
        self.fenced = False
        """Set when a segment was refused because the lease moved to another node: the worker stops for good."""
        self.stop_event = threading.Event()
        self.state = "reconnecting"
        self.segments_written = 0
        self.packets_written = 0
        self.packets_dropped_before_keyframe = 0
        self._segment: _Open | None = None
        self._run_prev_end: int | None = None
        self._closing_outage = False
        self._pending: list[Path] = []
        """Journals of segments whose finish failed; registered before any later segment."""
        self._gap_start_us: int | None = None
        self._gap_open = False
        self._storage_full_alarmed = False
        self._feed: LiveFeed | None = None

    # --- thread entry -------------------------------------------------------------------------------------
    def stop(self) -> None:
        self.stop_event.set()

    def pending_journals(self) -> list[Path]:
        """After the thread ended: the journals of segments it could not register (oldest first)."""
        return list(self._pending)

    def run(self) -> None:
        s = self.ctx.settings
        backoff = s.reconnect_min_seconds
        with self.ctx.db.session() as sess:
            last = catalog.last_segment(sess, self.camera_id)
            activated = sess.scalar(
                select(func.max(CameraStateChange.at_us)).where(
                    CameraStateChange.camera_id == self.camera_id, CameraStateChange.to_state == "active"
                )
            )
        # Footage is missing from the last segment's end, or from the (re)activation if that came later: time
        # the camera spent suspended was not meant to be recorded and is not an outage.
        candidates = [t for t in (last.end_us if last is not None else None, activated) if t is not None]
        self._gap_start_us = max(candidates) if candidates else None
        self._set_state("reconnecting", "connecting")
        while not self.stop_event.is_set():
            started = self.ctx.clock.monotonic_us()
            try:
                reason_code, reason = self._run_once()
                state = "reconnecting"
            except NvrError as exc:  # volumes: identity missing, storage full
                if exc.code == "lease_lost":
                    self.fenced = True
                    log.error("camera %s: %s; this node stops recording it", self.camera_id, exc.message)
                    break
                reason_code, reason, state = exc.code, exc.message, "error"
                log.error("camera %s: %s", self.camera_id, exc.message)
                self.ctx.event(self.camera_id, exc.code, exc.message)
            except Exception as exc:
                reason_code, reason = classify(exc)
                state = "reconnecting" if reason_code in ("disconnected", "timeout") else "error"
                if reason_code == "internal_error":
                    log.exception("camera %s: unexpected failure", self.camera_id)
            try:
                self._close_segment()
                if self.stop_event.is_set():
                    break
                self._begin_outage(reason_code, reason)
                self._set_state(state, f"{reason_code}: {reason}")
                if reason_code == "storage_full" and not self._storage_full_alarmed:
                    self._storage_full_alarmed = True
                    self.ctx.alarm_storage_full(self.camera_id, reason)
            except Exception:
                # The database or the volume is failing too: keep the thread (and its pending journals) alive
                # and try again after the backoff rather than dying and losing the order of the chain.
                log.exception("camera %s: could not record the failure; retrying", self.camera_id)
            log.warning("camera %s %s (%s: %s); retrying in %.1fs", self.camera_id, state, reason_code, reason, backoff)
            ran_s = (self.ctx.clock.monotonic_us() - started) / 1e6
            if ran_s >= STABLE_RUN_S:
                backoff = s.reconnect_min_seconds
            if self.stop_event.wait(backoff):
                break
            backoff = min(backoff * 2, s.reconnect_max_seconds)
        try:
            self._close_segment()
        except Exception as exc:  # the supervisor retries what is left in _pending (pending_journals)
            log.warning("camera %s: segment left for the supervisor to register (%s)", self.camera_id, exc)
        self._set_state("offline", "recorder stopped")

    # --- one connection -----------------------------------------------------------------------------------
    def _run_once(self) -> tuple[str, str]:
        s = self.ctx.settings
        timeout_us = int(s.rtsp_timeout_seconds * 1_000_000)
        options = {"rtsp_transport": s.rtsp_transport, "timeout": str(timeout_us), "allowed_media_types": "video+audio"}
        # No PyAV ``timeout=``: its interrupt callback takes the GIL on every FFmpeg I/O poll, which at 64
        # cameras cost more CPU than the remuxing itself. The RTSP ``timeout`` option bounds socket I/O instead.
        container = av.open(self.url, options=options)
        try:
            return self._record(container)
        finally:
            self._end_live()
            container.close()

    def _select_streams(self, container: av.container.InputContainer) -> tuple[av.stream.Stream, list, str]:
        videos = [st for st in container.streams.video]
        if not videos:
            found = ", ".join(st.codec_context.name for st in container.streams) or "nothing"
            raise CameraFault("no_video", f"the stream has no video track (found: {found})")
        video = next((v for v in videos if v.codec_context.name in VIDEO_CODECS), None)
        if video is None:
            raise CameraFault(
                "unsupported_codec",
                f"video codec {videos[0].codec_context.name} is not supported (supported: {', '.join(VIDEO_CODECS)})",
            )
        kept: list[av.stream.Stream] = [st for st in videos if st.codec_context.name in VIDEO_CODECS]
        fmt = "mp4"
        for a in container.streams.audio:
            name = a.codec_context.name
            if name in MP4_AUDIO:
                kept.append(a)
            elif name in MOV_AUDIO:
                kept.append(a)
                fmt = "mov"
            else:
                msg = f"audio stream {a.index} ({name}) cannot be stored in MP4 or QuickTime; it is not recorded"
                log.warning("camera %s: %s", self.camera_id, msg)
                self.ctx.event(self.camera_id, "stream_dropped", msg)
        return video, kept, fmt

    def _record(self, container: av.container.InputContainer) -> tuple[str, str]:
        s = self.ctx.settings
        video, streams, fmt = self._select_streams(container)
        codecs = ",".join(st.codec_context.name for st in streams)
        vtb: Fraction = video.time_base  # type: ignore[assignment]  # PyAV stub: Optional; a demuxed track has one
        rate = video.average_rate or video.guessed_rate or 25
        timelines: dict[int, StreamTimeline] = {}
        for st in streams:
            if st.type == "video":
                nominal = round(1 / (float(rate) * float(st.time_base)))
            else:
                sr = st.codec_context.sample_rate or 8000
                frame = st.codec_context.frame_size or 1024
                nominal = round(frame / sr / float(st.time_base))
            timelines[st.index] = StreamTimeline(st.index, st.time_base, nominal, s.clock_step_threshold_seconds)
        target = int(s.segment_seconds / float(vtb))
        # Per-packet arithmetic in integers: media µs = dts * us_num // us_den.
        us_num, us_den = vtb.numerator * 1_000_000, vtb.denominator
        step_limit_us = int(s.clock_step_threshold_seconds * 1_000_000)
        drift_limit_us = 4 * step_limit_us
        clock = self.ctx.clock
        stop = self.stop_event
        vidx = video.index
        # Server wall clock minus media time, minimised over the run: FFmpeg's probing hands over the first
        # second or so in a burst, so early packets "arrive" late; the smallest offset is the closest to capture.
        run_offset: int | None = None
        self._run_prev_end = None
        last_video_end: int | None = None
        wall_mono_ref = self.ctx.clock.now_us() - self.ctx.clock.monotonic_us()
        extradata: dict[int, bytes] = {}
        feed = self._open_live(streams, fmt, extradata)
        for pkt in container.demux(streams):
            if stop.is_set():
                break
            if pkt.size == 0:  # flush packets at end of stream carry nothing
                continue
            mono = clock.monotonic_us()
            wall = clock.now_us()
            # A server clock step (NTP correction, manual change) shows as wall minus monotonic moving.
            if abs((wall - mono) - wall_mono_ref) > step_limit_us:
                step = ((wall - mono) - wall_mono_ref) / 1e6
                self.ctx.event(self.camera_id, "server_clock_step", f"server wall clock stepped by {step:+.3f} s")
                log.warning("camera %s: server clock stepped by %+.3f s", self.camera_id, step)
                wall_mono_ref = wall - mono
                if self._segment is not None and run_offset is not None:
                    self._segment.start_override = self._segment.first_media_us + run_offset
                run_offset = None  # re-anchor to the corrected wall clock
            idx = pkt.stream_index
            pts, dts, jump = timelines[idx].fix(pkt.pts, pkt.dts, mono)
            pkt.pts, pkt.dts = pts, dts
            if jump is not None:
                self.ctx.event(
                    self.camera_id,
                    "camera_timestamp_step",
                    f"stream {jump.stream_index} timestamps jumped by {jump.jump_seconds:+.3f} s "
                    "beyond the time that passed; timeline continued",
                )
            is_video = idx == vidx
            if is_video:
                media_us = dts * us_num // us_den
                offset = wall - media_us
                if run_offset is not None and offset - run_offset > drift_limit_us:
                    # Arriving far later than the run's anchor says: the camera's clock runs slow or the link
                    # stalled for long; re-anchor rather than let wall times drift from the truth.
                    self.ctx.event(
                        self.camera_id,
                        "camera_clock_drift",
                        f"media clock behind server clock by {(offset - run_offset) / 1e6:.3f} s; re-anchored",
                    )
                    log.warning(
                        "camera %s: media clock behind server clock by %.3f s; re-anchored",
                        self.camera_id,
                        (offset - run_offset) / 1e6,
                    )
                    run_offset = offset
                run_offset = offset if run_offset is None else min(run_offset, offset)
            if is_video and pkt.is_keyframe:
                if idx not in extradata and not video.codec_context.extradata:
                    extradata[idx] = _annexb_parameter_sets(bytes(pkt), video.codec_context.name)
                seg = self._segment
                if (
                    seg is not None
                    and s.volume_min_free_bytes
                    and free_bytes(seg.writer.volume.path) < s.volume_min_free_bytes
                ):
                    # Below the critical mark: close this segment cleanly at a GOP boundary, then stop writing.
                    assert run_offset is not None  # set just above for every video packet
                    self._finish(seg, media_us - seg.first_media_us, run_offset)
                    raise NvrError(
                        Kind.UNAVAILABLE,
                        "storage_full",
                        f"volume {seg.writer.volume.path} fell below the critical free-space mark "
                        f"({s.volume_min_free_bytes} bytes); recording stopped",
                    )
                if seg is None or dts - seg.first_dts >= target:
                    assert run_offset is not None
                    start_us = media_us + run_offset
                    if seg is not None:
                        duration_us = media_us - seg.first_media_us
                        self._finish(seg, duration_us, run_offset)
                    volume = self.ctx.pick_volume()
                    hash_alg = self.ctx.hash_alg()
                    writer = SegmentWriter(
                        volume,
                        self.camera_id,
                        start_us,
                        run_offset,
                        streams,
                        codecs,
                        extradata,
                        container_format=fmt,
                        hash_alg=hash_alg,
                        encryption=self.ctx.encryption_for(volume, hash_alg),
                        fence=self.fence,
                    )
                    self._segment = _Open(writer, dts, media_us)
                    if seg is None:
                        # The gap closes when this segment's row fixes its start (see _finish).
                        self._closing_outage = True
                        self._set_state("recording", None)
            seg = self._segment
            if seg is None:
                self.packets_dropped_before_keyframe += 1
                continue
            try:
                seg.writer.write(pkt, idx)
            except Exception as exc:
                if _disk_full(exc, seg, s.volume_min_free_bytes):
                    raise NvrError(
                        Kind.UNAVAILABLE,
                        "storage_full",
                        f"volume {seg.writer.volume.path} ran out of space while writing",
                    ) from exc
                raise
            self.packets_written += 1
            if is_video:
                seg.frames += 1
                last_video_end = dts + (pkt.duration or timelines[idx].nominal)
            # Live view costs nothing without viewers: one attribute read. The packet goes to the segment first:
            # the feed's muxer rescales its timestamps to its own stream, after the archive has them.
            if feed.wanted:
                feed.publish(pkt, idx, is_video and pkt.is_keyframe, mono)
            elif feed.muxing:
                feed.idle()
        self._end_live()
        if self.stop_event.is_set():
            # Hang up first: finishing the segment takes a moment, and the camera should not keep sending into a
            # socket nobody reads any more.
            container.close()
        seg = self._segment
        if seg is not None and last_video_end is not None and run_offset is not None:
            self._segment = None
            self._finish(seg, last_video_end * us_num // us_den - seg.first_media_us, run_offset)
        if self.stop_event.is_set():
            return "stopped", "recorder stopped"
        return "disconnected", "the stream ended (camera closed the connection or went away)"

    # --- live view ---------------------------------------------------------------------------------------------
    def _open_live(self, streams: list, fmt: str, extradata: dict[int, bytes]) -> LiveFeed:
        """This run's live feed, registered with the process's hub (a feed nobody can reach when there is none)."""
        hub = self.ctx.live
        if hub is None:
            feed = LiveFeed(self.camera_id, streams, fmt, extradata, self.ctx.live_limits)
        else:
            feed = hub.open_feed(self.camera_id, streams, fmt, extradata, self.ctx.live_limits)
        self._feed = feed
        return feed

    def _end_live(self) -> None:
        """The run is over: its viewers end (they may reconnect to the next run)."""
        feed, self._feed = self._feed, None
        if feed is None:
            return
        reason = RECORDER_STOPPED if self.stop_event.is_set() else CAMERA_DISCONNECTED
        try:
            if self.ctx.live is not None:
                self.ctx.live.close_feed(feed, reason)
            else:
                feed.close(reason)
        except Exception:  # live view must never take the recording down with it
            log.exception("camera %s: closing the live feed failed", self.camera_id)

    # --- segments -----------------------------------------------------------------------------------------
    def _finish(self, seg: _Open, duration_us: int, run_offset: int) -> None:
        """Finish the file and insert its row. Wall times come from the run's anchor (``run_offset``), which is
        better than the journal's first guess; consecutive segments of a run therefore touch exactly."""
        self._segment = None
        start_us = seg.start_override if seg.start_override is not None else seg.first_media_us + run_offset
        if self._run_prev_end is not None and abs(start_us - self._run_prev_end) < 1_000_000:
            # The anchor only ever moves earlier by jitter-sized amounts; keep the run's segments touching.
            start_us = self._run_prev_end
        try:
            done = seg.writer.finish()
        except Exception:
            seg.writer.abort()
            self._pending.append(seg.writer.journal_path)
            raise
        try:
            self._drain_pending()
            self._register(seg, done, start_us, duration_us, run_offset)
        except NvrError as exc:
            if exc.code != "lease_lost":
                self._pending.append(seg.writer.journal_path)
                raise
            self._set_fenced(seg, done, exc)
            raise
        except DB_AWAY as exc:
            # The database is away: the file is complete and its journal stays; recording goes on, and the rows
            # are back-filled in order (journal by journal) once the database answers again.
            self._pending.append(seg.writer.journal_path)
            log.warning(
                "camera %s: database unavailable (%s); %s kept with its journal, %d segment(s) waiting for rows",
                self.camera_id,
                type(exc).__name__,
                done.rel_path,
                len(self._pending),
            )
            self._run_prev_end = start_us + max(duration_us, 0)
            return
        except Exception:
            self._pending.append(seg.writer.journal_path)
            raise
        seg.writer.remove_journal()
        if self._closing_outage:
            self._closing_outage = False
            self._end_outage(start_us)
        self._run_prev_end = start_us + max(duration_us, 0)
        self.segments_written += 1
        log.info("camera %s: segment %s (%d bytes, %d frames)", self.camera_id, done.rel_path, done.bytes, seg.frames)

    def _register(self, seg: _Open, done: FinishedFile, start_us: int, duration_us: int, run_offset: int) -> None:
        with self.ctx.db.session() as sess:
            catalog.register_segment(
                sess,
                camera_id=self.camera_id,
                volume_id=seg.writer.volume.id,
                rel_path=done.rel_path,
                start_us=start_us,
                media_duration_us=max(duration_us, 0),
                size=done.bytes,
                frames=seg.frames,
                codecs=seg.writer.journal.codecs,
                clock_offset_us=run_offset,
                sha256=done.sha256,
                hash_alg=done.hash_alg,
                plain_digest=done.plain_digest,
                encryption=done.encryption,
                recovered=False,
                now_us=self.ctx.clock.now_us(),
                floor_days=self.ctx.settings.retention_floor_days,
                fence=self.fence,
            )
            # An open-ended evidence hold keeps catching new footage: its files are read-only from the start.
            holds.seal_new_segment(
                sess, self.camera_id, start_us, start_us + max(duration_us, 0), seg.writer.volume.path / done.rel_path
            )

    def _set_fenced(self, seg: _Open, done: FinishedFile, exc: NvrError) -> None:
        """The lease moved while this segment was written: keep the file aside (``.fenced``), say so, no row."""
        from nvr.recorder.recovery import fence_file  # the same handling as a fenced journal at start-up

        fence_file(self.ctx, seg.writer.journal, seg.writer.volume.path / done.rel_path, exc.message)
        seg.writer.remove_journal()

    def _close_segment(self) -> None:
        """After a failure mid-segment: stop writing and let recovery keep every complete fragment."""
        seg = self._segment
        if seg is None:
            return
        self._segment = None
        seg.writer.abort()
        self._pending.append(seg.writer.journal_path)
        self._drain_pending()

    def _drain_pending(self) -> None:
        """Register, in order, segments whose finish failed (disk full at close, database away) before any later
        one, so the chain's order stays the order of the footage."""
        from nvr.recorder.recovery import recover_journal  # late: only needed on these failure paths

        while self._pending:
            recover_journal(self.ctx, self._pending[0])
            self._pending.pop(0)

    # --- outages and status ---------------------------------------------------------------------------------
    def _begin_outage(self, code: str, reason: str) -> None:
        if self._gap_open:
            self.ctx.open_gap(self.camera_id, self._gap_start_us or self.ctx.clock.now_us(), code, reason)
            return
        with self.ctx.db.session() as sess:
            last = catalog.last_segment(sess, self.camera_id)
        start = last.end_us if last is not None else (self._gap_start_us or self.ctx.clock.now_us())
        self.ctx.open_gap(self.camera_id, start, code, reason)
        self._gap_open = True

    def _end_outage(self, resumed_us: int) -> None:
        if self._gap_open:
            self.ctx.close_gap(self.camera_id, resumed_us)
        elif self._gap_start_us is not None and resumed_us - self._gap_start_us > 1_000_000:
            self.ctx.record_gap(
                self.camera_id,
                self._gap_start_us,
                resumed_us,
                "recorder_stopped",
                "no recorder was running for this camera",
            )
        self._gap_open = False
        self._gap_start_us = None
        self._storage_full_alarmed = False

    def _set_state(self, state: str, reason: str | None) -> None:
        self.state = state
        try:
            self.ctx.set_state(self.camera_id, state, reason)
        except DB_AWAY as exc:  # the status board waits; the footage does not
            log.warning("camera %s: state %s not saved, database unavailable (%s)", self.camera_id, state, exc)

    def __repr__(self) -> str:
        return f"CameraWorker({self.camera_id}, {redact_url(self.url)}, {self.state})"
