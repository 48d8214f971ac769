"""Start-up recovery: turn what a crash left into finished segments, or remove it, and say which.

Every segment in progress has a journal (written and fsynced before the media file is created). For each journal:

- a row already exists for its file → the crash came after the commit; only the journal is left to remove;
- the final file exists without a row → the crash came between rename and commit; the file is complete: register;
- the ``.partial`` file exists → cut it back to its last complete fragment (at most the GOP being built is
  lost), fsync, rename, register it as a shorter segment marked ``recovered``; with no complete fragment, remove it;
- nothing exists → remove the journal.

The recorder also uses this after a failure mid-segment (disk full, stream error), so a camera fault never
throws away the fragments already written.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, BinaryIO

import av
from sqlalchemy import select

from integrity import audit_log
from integrity.hashing import file_digest
from nvr.errors import NvrError
from nvr.models import Segment
from nvr.recorder.context import RecorderContext
from retention import holds
from storage import catalog, crypt, fmp4, layout, segment_io
from storage.keyring import KeyringError
from storage.volumes import fsync_dir
from storage.writer import Journal, rename_noreplace

log = logging.getLogger(__name__)


def probe(path: Path | BinaryIO) -> tuple[int, int]:
    """(video frames, media duration in µs) of a segment file (a path, or its plaintext as a file object), read from
    its packets without decoding."""
    with av.open(
        path if not isinstance(path, Path) else str(path), "r", format=None if isinstance(path, Path) else "mp4"
    ) as c:
        if not c.streams.video:
            return 0, 0
        v = c.streams.video[0]
        frames = 0
        first = last = None
        last_dur = 0
        for pkt in c.demux(v):
            if pkt.size == 0 or pkt.dts is None:
                continue
            frames += 1
            first = pkt.dts if first is None else min(first, pkt.dts)
            last = pkt.dts if last is None else max(last, pkt.dts)
            last_dur = pkt.duration or 0
        if first is None or last is None:
            return 0, 0
        # PyAV's stub types Stream.time_base as optional; a demuxed track always has one.
        return frames, int((last + last_dur - first) * v.time_base * 1_000_000)  # type: ignore[operator]


def recover_journal(ctx: RecorderContext, journal_path: Path) -> str:
    """Act on one journal; returns what was done ("registered", "recovered", "removed", "cleaned")."""
    j = Journal.load(journal_path)
    volume = next((v for v in ctx.volumes if v.id == j.volume_id), None)
    if volume is None:
        log.error("journal %s names volume %s, which is not configured; left alone", journal_path, j.volume_id)
        return "skipped"
    final = volume.path / j.rel_path
    partial = final.with_name(final.name + layout.PARTIAL_SUFFIX)
    with ctx.db.session() as s:
        has_row = s.scalar(select(Segment.id).where(Segment.volume_id == volume.id, Segment.rel_path == j.rel_path))
    if j.encryption is not None:
        return _recover_encrypted(ctx, j, journal_path, volume.id, final, partial, has_row is not None)
    outcome = "cleaned"
    recovered = False
    if has_row is None and not final.exists() and partial.exists():
        try:
            result = fmp4.truncate_to_complete(partial)
        except fmp4.Fmp4Error as exc:
            # Not what our muxer writes: keep it for a person to look at rather than delete possible evidence.
            aside = partial.with_name(partial.name + ".corrupt")
            os.rename(partial, aside)
            log.error("recovery: %s is not a fragmented MP4 we can cut back (%s); moved to %s", partial, exc, aside)
            result = None
            outcome = "quarantined"
        if result is None:
            pass
        elif result.action == "unusable":
            partial.unlink()
            fsync_dir(partial.parent)
            log.warning("recovery: %s had no complete fragment; removed (%d bytes)", partial, result.original_size)
            outcome = "removed"
        else:
            # The muxer only writes whole fragments, so a kill between two of them leaves no torn bytes; only a
            # closing mfra index shows the muxer finished. Without one the file is a crash remnant either way.
            closed = result.action == "untouched" and fmp4.scan(partial).has_mfra
            rename_noreplace(partial, final)
            fsync_dir(final.parent)
            recovered = not closed
            if result.action == "truncated":
                log.warning(
                    "recovery: %s cut back from %d to %d bytes (%d complete fragments kept)",
                    final,
                    result.original_size,
                    result.new_size,
                    result.fragments_kept,
                )
            elif recovered:
                log.warning(
                    "recovery: %s ended at a fragment boundary; kept whole (%d fragments)", final, result.fragments_kept
                )
            else:
                log.warning("recovery: %s was complete but not yet renamed; kept whole", final)
    if has_row is None and final.exists():
        frames, duration_us = probe(final)
        outcome = _register(ctx, j, volume.id, final, frames, duration_us, None, recovered)
    journal_path.unlink(missing_ok=True)
    fsync_dir(journal_path.parent)
    return outcome


FENCED_SUFFIX = ".fenced"


def fence_file(ctx: RecorderContext, j: Journal, final: Path, why: str) -> Path:
    """A finished segment refused because its node lost the camera's lease (nvr.cluster.check_fence): renamed to
    ``<name>.fenced`` beside where it was (never deleted: it is footage, for a person to look at), reported as a
    camera event and an audit event. Its row never exists, so the chain the new holder writes stays the only one."""
    aside = final.with_name(final.name + FENCED_SUFFIX)
    os.rename(final, aside)
    fsync_dir(final.parent)
    detail = f"{final.name} kept as {aside.name}: {why}"
    log.error("camera %s: segment fenced: %s", j.camera_id, detail)
    ctx.event(j.camera_id, "segment_fenced", detail)
    with ctx.db.session() as s:
        audit_log.record(
            s,
            ctx.clock.now_us(),
            audit_log.SYSTEM,
            audit_log.INTERNAL,
            audit_log.Event(
                "recorder.segment_fenced",
                "failed",
                camera_id=j.camera_id,
                window_start_us=j.start_us,
                object_id=str(aside),
                reason=detail,
            ),
        )
    return aside


def _quarantine(path: Path, why: str) -> None:
    aside = path.with_name(path.name + ".corrupt")
    os.rename(path, aside)
    fsync_dir(path.parent)
    log.error("recovery: %s cannot be recovered (%s); moved to %s for a person to look at", path, why, aside)


def _recover_encrypted(
    ctx: RecorderContext, j: Journal, journal_path: Path, volume_id: str, final: Path, partial: Path, has_row: bool
) -> str:
    """The encrypted counterpart of the steps above (storage.segment_io.recover_encrypted). Without the master key
    nothing is touched and the journal stays: the next start (with the key back) finishes the job."""
    assert j.encryption is not None
    sidecar = segment_io.sidecar_path(final)
    name = segment_io.segment_name(volume_id, j.rel_path)
    outcome = "cleaned"
    if not has_row and not final.exists() and partial.exists():
        try:
            _cipher, key = segment_io.data_key(final, ctx.keyring, name)
        except KeyringError as exc:
            if exc.code.startswith("master_key"):
                log.error("recovery: %s left for later: %s", partial, exc.message)
                return "skipped"
            _quarantine(partial, exc.message)  # the sidecar is gone or damaged: keep the ciphertext for a person
            key = None
        if key is not None:
            try:
                result = segment_io.recover_encrypted(partial, j.encryption, key, j.hash_alg)
            except NvrError as exc:
                _quarantine(partial, f"{exc.code}: {exc.message}")
                result = None
            if result is not None and result.action == "unusable":
                partial.unlink()
                sidecar.unlink(missing_ok=True)
                fsync_dir(partial.parent)
                log.warning("recovery: %s had no complete fragment; removed (%d bytes)", partial, result.original_size)
                outcome = "removed"
            elif result is not None:
                rename_noreplace(partial, final)
                fsync_dir(final.parent)
                log.warning(
                    "recovery: encrypted %s %s (%d -> %d bytes, %d complete fragments kept)",
                    final,
                    "kept whole" if result.action == "untouched" else "cut back and re-sealed",
                    result.original_size,
                    result.new_size,
                    result.fragments_kept,
                )
                outcome = _register_encrypted(ctx, j, volume_id, final, key, recovered=not result.closed)
    elif not has_row and final.exists():
        try:
            _cipher, key = segment_io.data_key(final, ctx.keyring, name)
        except KeyringError as exc:
            log.error("recovery: %s left for later: %s", final, exc.message)
            return "skipped"
        outcome = _register_encrypted(ctx, j, volume_id, final, key, recovered=False)
    elif not has_row and not partial.exists():
        sidecar.unlink(missing_ok=True)  # the crash came before the first media byte: the key wraps nothing
    journal_path.unlink(missing_ok=True)
    fsync_dir(journal_path.parent)
    return outcome


def _register_encrypted(
    ctx: RecorderContext, j: Journal, volume_id: str, final: Path, key: bytes, recovered: bool
) -> str:
    reader = crypt.DecryptingReader(final, key)
    with segment_io.PlainView(reader) as view:
        frames, duration_us = probe(view)  # type: ignore[arg-type]
    return _register(ctx, j, volume_id, final, frames, duration_us, reader.plain_digest(j.hash_alg), recovered)


def _register(
    ctx: RecorderContext,
    j: Journal,
    volume_id: str,
    final: Path,
    frames: int,
    duration_us: int,
    plain_digest: str | None,
    recovered: bool,
) -> str:
    """Insert the recovered file's row (its digest of the stored bytes computed now) and seal it under a hold.
    Under the journal's lease fence: a file the camera's new holder has recorded past is fenced, not registered."""
    try:
        with ctx.db.session() as s:
            row = _insert(ctx, s, j, volume_id, final, frames, duration_us, plain_digest, recovered)
    except NvrError as exc:
        if exc.code != "lease_lost":
            raise
        fence_file(ctx, j, final, exc.message)
        return "fenced"
    log.warning(
        "recovery: registered %s%s as segment %d of camera %s (%d frames, %.3f s)%s",
        "encrypted " if j.encryption else "",
        final,
        row.seq,
        j.camera_id,
        frames,
        duration_us / 1e6,
        " after cutting it back" if recovered else "",
    )
    return "recovered" if recovered else "registered"


def _insert(
    ctx: RecorderContext,
    s: Any,
    j: Journal,
    volume_id: str,
    final: Path,
    frames: int,
    duration_us: int,
    plain_digest: str | None,
    recovered: bool,
) -> Any:
    row = catalog.register_segment(
        s,
        camera_id=j.camera_id,
        volume_id=volume_id,
        rel_path=j.rel_path,
        start_us=j.start_us,
        media_duration_us=duration_us,
        size=final.stat().st_size,
        frames=frames,
        codecs=j.codecs,
        clock_offset_us=j.clock_offset_us,
        sha256=file_digest(final, j.hash_alg),
        hash_alg=j.hash_alg,
        plain_digest=plain_digest,
        encryption=j.encryption,
        recovered=recovered,
        now_us=ctx.clock.now_us(),
        floor_days=ctx.settings.retention_floor_days,
        fence=j.fence,
        fence_end_us=j.start_us + duration_us,
    )
    holds.seal_new_segment(s, j.camera_id, row.start_us, row.end_us, final)
    return row


def recover_all(ctx: RecorderContext) -> dict[str, int]:
    """Recover every journal on every configured volume, oldest first, so each camera's chain stays in order."""
    counts: dict[str, int] = {}
    journals: list[tuple[int, Path]] = []
    for v in ctx.volumes:
        if not v.path.is_dir():
            continue
        for p in v.path.rglob("*" + layout.JOURNAL_SUFFIX):
            if p.name.startswith("."):
                continue
            try:
                journals.append((Journal.load(p).start_us, p))
            except (ValueError, TypeError, OSError) as exc:
                media = [m for m in p.parent.glob(p.stem + ".*") if m != p]
                if media:
                    log.error(
                        "recovery: unreadable journal %s (%s) beside %s; left for a person to look at",
                        p,
                        exc,
                        ", ".join(m.name for m in media),
                    )
                else:
                    # Torn while being written (step 1): no media file was ever created for it.
                    p.unlink()
                    log.warning("recovery: removed torn journal %s with no media beside it", p)
                    counts["removed_journal"] = counts.get("removed_journal", 0) + 1
    for _, p in sorted(journals):
        outcome = recover_journal(ctx, p)
        counts[outcome] = counts.get(outcome, 0) + 1
    if counts:
        log.warning("start-up recovery: %s", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return counts
