"""Export jobs: making the bundle of an approved request in the background, and retiring bundles that expired.

One :class:`ExportRunner` thread per API process claims queued jobs from the database (``queued`` → ``running`` by a
conditional UPDATE, so two processes never run the same job), and for each:

1. re-checks the request (approved, not expired; on the grant route the grant must still be in force);
2. pins the window's segments of every camera (``read_pins`` rows, heartbeat refreshed while it runs), so
   retention cannot delete them meanwhile;
3. picks, per camera, the earliest signed checkpoint made after the last original was finished (or signs a new
   one when none is that recent yet), pins the rows between the window and that checkpoint too (the *bridge* the
   offline verifier walks from the originals to the checkpoint), and refuses if any of them is gone;
4. hands everything to :func:`storage.bundle.write_bundle`, which copies the originals while re-hashing them
   (a segment whose hash no longer matches stops the export and is named: fail closed), remuxes the convenience
   MP4, signs the manifest and renames the finished ZIP into ``<data_dir>/exports``; nothing partial stays;
5. records the outcome (one ``export.job.done`` event per camera, with the bytes copied; or ``export.job.failed`` /
   ``export.job.cancelled``) and removes its pins.

Progress (bytes done of bytes total) is written to the job row about once a second; a cancel request is noticed
within a second. A ``running`` job whose heartbeat is older than :data:`STALE_US` belonged to a process that died: it
is marked failed (``export_interrupted``) and its partial files are removed. Bundles past their lifetime are
deleted (``export.bundle.delete``) and their job becomes ``deleted``.

The people's steps are service functions here too: :func:`start_job`, :func:`cancel_job` and
:func:`count_download`, each enforcing its rule (party, viewer cap, state) and writing its audit event in its own
transaction. Every change of a job's state is one conditional UPDATE (``WHERE state = <the state it leaves>``,
rowcount checked), so runners of several processes, a cancel and the expiry never act twice on one job; the download
quota is ``downloads = downloads + 1 WHERE downloads < max``. See docs/design/concurrency.md.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.orm import Session

from api import alerts, audit, exports
from api.context import Services
from api.footage import TOUCH_US
from api.people import Principal, user_actor
from api.roles import parse_roles
from integrity import chain, checkpoints, keys, trusted_time, witness
from nvr import registry
from nvr.background import BackgroundLoop
from nvr.clock import iso
from nvr.config import Settings
from nvr.errors import Kind, NvrError
from nvr.models import Checkpoint, ExportJob, ExportRequest, Grant, Meta, ReadPin, Segment, User, Volume
from storage import pins

if TYPE_CHECKING:  # storage.bundle imports PyAV: loaded when a job runs, not with the API
    from storage.bundle import BundleInput

log = logging.getLogger(__name__)
STALE_US = 120_000_000
POLL_SECONDS = 2.0
PROGRESS_EVERY_S = 1.0
_ROW_FIELDS = (*chain.LINKED_FIELDS, *chain.OPTIONAL_FIELDS, "prev_link", "link")  # hash_alg: per-row digests


def bundle_path(services: Services, job: ExportJob) -> Path | None:
    return _bundle_file(services.settings, job)


def _bundle_file(settings: Settings, job: ExportJob) -> Path | None:
    return None if job.bundle_name is None else settings.exports_dir / job.bundle_name


def _move(s: Session, job_id: int, from_states: tuple[str, ...], **values: Any) -> bool:
    """Move a job out of one of ``from_states``: one conditional UPDATE; False when it was not in them any more (a
    cancel, another runner or the expiry got there first)."""
    done = s.execute(
        update(ExportJob).where(ExportJob.id == job_id, ExportJob.state.in_(from_states)).values(**values),
        execution_options={"synchronize_session": False},
    )
    return cast(CursorResult[Any], done).rowcount == 1


def _reload(s: Session, job_id: int) -> ExportJob:
    job = s.scalar(select(ExportJob).where(ExportJob.id == job_id).execution_options(populate_existing=True))
    assert job is not None
    return job


# --- the people's steps -------------------------------------------------------------------------------------
def _require_party(p: Principal, r: ExportRequest, what: str) -> None:
    if p.user_id not in (r.requester_id, r.cosigner_id):
        raise NvrError(
            Kind.PERMISSION_DENIED, "export_not_party", f"only the requester and the co-signer may {what} this export"
        )


def start_job(s: Session, p: Principal, meta: audit.RequestMeta, request_id: int, now_us: int) -> ExportJob:
    """Queue the job making the bundle of an approved request (requester or co-signer; ``export.job.start``).

    At most one job per request is queued, running or done: the request's row lock (api.exports) makes parallel
    starts take turns, and each looks for an existing job only once it holds the lock."""
    r = exports.get_visible(s, p, request_id)
    _require_party(p, r, "start")
    exports.require_may_copy(p, "start an export job")
    r = exports.locked_request(s, r.id)
    state = exports.effective_state(r, now_us, exports.has_bundle(s, r.id))
    if state == "expired":
        raise NvrError(
            Kind.FAILED_PRECONDITION, "export_request_expired", f"the approval of request {r.id} has expired"
        )
    if state != "approved":
        raise NvrError(Kind.FAILED_PRECONDITION, "export_state_invalid", f"export request {r.id} is {state}")
    if exports.active_job(s, r.id) is not None:
        raise NvrError(Kind.CONFLICT, "export_job_exists", f"request {r.id} already has a bundle or one is running")
    job = ExportJob(
        request_id=r.id,
        state="queued",
        started_by=p.user_id,
        created_us=now_us,
        cancel_requested=False,
        bytes_total=0,
        bytes_done=0,
        downloads=0,
    )
    s.add(job)
    s.flush()
    audit.record(s, now_us, p.actor, meta, exports.event(r, "export.job.start", f"job {job.id}; cameras={r.cameras}"))
    return job


def cancel_job(s: Session, p: Principal, meta: audit.RequestMeta, request_id: int, now_us: int) -> ExportJob:
    """Cancel a queued job at once, or ask a running one to stop (requester or co-signer; ``export.job.cancel``).
    The runner's claim (queued → running) and this cancel (queued → cancelled) are both conditional: one wins."""
    r = exports.get_visible(s, p, request_id)
    _require_party(p, r, "cancel")
    r = exports.locked_request(s, r.id)
    job = exports.latest_job(s, r.id)
    if job is None or not (
        _move(s, job.id, ("queued",), state="cancelled", finished_us=now_us, cancel_requested=True)
        or _move(s, job.id, ("running",), cancel_requested=True)
    ):
        raise NvrError(Kind.FAILED_PRECONDITION, "export_job_not_running", "no export job is running")
    job = _reload(s, job.id)
    audit.record(s, now_us, p.actor, meta, exports.event(r, "export.job.cancel", f"job {job.id}"))
    return job


@dataclass
class Download:
    """One counted download: the bundle file is open already (its lifetime may end while it is sent; the open file
    still holds the counted bytes), ``number`` is this download's place in the quota."""

    request: ExportRequest
    job: ExportJob
    file: IO[bytes]
    size: int
    number: int
    filename: str


def count_download(
    s: Session,
    p: Principal,
    meta: audit.RequestMeta,
    settings: Settings,
    request_id: int,
    destination: str,
    now_us: int,
) -> Download:
    """Hand out one copy of the bundle (requester or co-signer, at most ``export_max_downloads`` times in all, until
    it expires), declaring where the copy goes: ``export.download`` per camera with the destination.

    The quota is one conditional UPDATE (``downloads = downloads + 1 WHERE downloads < max``, rowcount checked), so
    parallel downloads cannot pass it together; the number in the audit reason is the one this UPDATE wrote."""
    destination = destination.strip()
    if not destination or len(destination) > 2000:
        raise NvrError(Kind.INVALID_ARGUMENT, "destination_invalid", "destination must be 1 to 2000 characters")
    r = exports.get_visible(s, p, request_id)
    _require_party(p, r, "download")
    exports.require_may_copy(p, "download an export bundle")
    job = s.scalar(
        select(ExportJob)
        .where(ExportJob.request_id == r.id, ExportJob.state.in_(("done", "deleted")))
        .order_by(ExportJob.id.desc())
        .limit(1)
    )
    if job is None:
        raise NvrError(Kind.FAILED_PRECONDITION, "bundle_not_ready", "no bundle has been made for this request")
    limit = settings.export_max_downloads
    counted = s.execute(
        update(ExportJob)
        .where(
            ExportJob.id == job.id,
            ExportJob.state == "done",
            ExportJob.downloads < limit,
            or_(ExportJob.expires_us.is_(None), ExportJob.expires_us > now_us),
        )
        .values(downloads=ExportJob.downloads + 1)
        .returning(ExportJob.downloads),
        execution_options={"synchronize_session": False},
    ).first()
    job = _reload(s, job.id)
    if counted is None:
        if job.state != "done" or (job.expires_us is not None and now_us >= job.expires_us):
            raise NvrError(Kind.GONE, "bundle_expired", "the bundle's lifetime has ended and it is deleted")
        raise NvrError(
            Kind.RESOURCE_EXHAUSTED,
            "download_limit_reached",
            f"the bundle has been downloaded {job.downloads} time(s), the most allowed",
        )
    number = int(counted[0])
    path = _bundle_file(settings, job)
    try:
        if path is None:
            raise FileNotFoundError
        f = path.open("rb")
    except OSError:
        raise NvrError(Kind.DATA_LOSS, "bundle_missing", "the bundle file is missing on the server") from None
    try:
        size = path.stat().st_size
        for camera_id in exports.cameras_of(r):
            alerts.record(  # a retrieval: judged by the abnormal-use rules (api.alerts) in this transaction
                s,
                settings,
                now_us,
                p.actor,
                meta,
                exports.event(
                    r,
                    "export.download",
                    f"job {job.id}; download {number} of {limit}; bundle sha256 {job.bundle_sha256}",
                    camera_id=camera_id,
                    destination=destination,
                    bytes=job.bundle_bytes,
                ),
            )
    except BaseException:
        f.close()
        raise
    name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in f"export-{r.id}-{r.case_ref}.zip")
    return Download(r, job, f, size, number, name)


class ExportRunner(BackgroundLoop):
    """Runs queued export jobs one at a time in a daemon thread; :meth:`wake` when one was queued."""

    thread_name = "export-runner"
    retry_seconds = POLL_SECONDS

    def __init__(self, services: Services) -> None:
        super().__init__()
        self.services = services

    def start(self) -> None:
        self.services.settings.exports_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        super().start()

    def step(self) -> float:
        return 0.0 if self.run_once() and not self.stopping else POLL_SECONDS

    def run_once(self) -> bool:
        """Housekeeping, then at most one queued job; True when a job was run."""
        self.expire_bundles()
        self.fail_stale()
        job_id = self._claim()
        if job_id is None:
            return False
        self.run_job(job_id)
        return True

    # --- claiming and housekeeping --------------------------------------------------------------------------
    def _claim(self) -> int | None:
        """The oldest queued job, now ``running`` and this runner's: ``queued`` → ``running`` is one conditional
        UPDATE, so of several runners (one per API process) exactly one wins each job; a loser tries the next."""
        svc = self.services
        now = svc.clock.now_us()
        for _ in range(5):
            with svc.db.session() as s:
                candidate = s.scalar(
                    select(ExportJob.id).where(ExportJob.state == "queued").order_by(ExportJob.id).limit(1)
                )
                if candidate is None:
                    return None
                if _move(s, int(candidate), ("queued",), state="running", started_us=now, heartbeat_us=now):
                    return int(candidate)
        return None

    def fail_stale(self) -> None:
        svc = self.services
        now = svc.clock.now_us()
        with svc.db.session() as s:
            stale = list(
                s.scalars(
                    select(ExportJob.id).where(ExportJob.state == "running", ExportJob.heartbeat_us < now - STALE_US)
                )
            )
        for job_id in stale:
            with svc.db.session() as s:
                # Conditional: the job may have finished, or another runner may have failed it, since the query.
                if not _move(s, job_id, ("running",), state="failed", finished_us=now):
                    continue
                job = _reload(s, job_id)
                self._cleanup_files(job.id)
                _unpin_job(s, job.id)
                self._finish(
                    s, job, "failed", "export_interrupted", "the process making the bundle stopped before it finished"
                )

    def expire_bundles(self) -> None:
        """Delete the bundles whose lifetime ended by the trusted time (integrity.trusted_time); none at all while
        the wall clock runs ahead of it (``clock_untrusted``): a bundle is kept longer, never deleted early."""
        svc = self.services
        trusted = trusted_time.shared(svc.db, svc.settings, svc.clock)
        trusted.refresh()
        clock = trusted.status()
        trusted.record_state(clock)
        if not clock.trusted:
            return
        now = trusted.now_us()
        with svc.db.session() as s:
            due = list(s.scalars(select(ExportJob.id).where(ExportJob.state == "done", ExportJob.expires_us <= now)))
        for job_id in due:
            with svc.db.session() as s:
                if not _move(s, job_id, ("done",), state="deleted", deleted_us=now):
                    continue  # another runner deleted it first
                job = _reload(s, job_id)
                path = bundle_path(svc, job)
                if path is not None:
                    path.unlink(missing_ok=True)
                r = s.get(ExportRequest, job.request_id)
                assert r is not None
                audit.record(
                    s,
                    now,
                    audit.SYSTEM,
                    audit.INTERNAL,
                    audit.Event(
                        "export.bundle.delete",
                        "ok",
                        object_id=f"export:{r.id}",
                        case_ref=r.case_ref,
                        reason=f"job {job.id}: bundle lifetime ended ({job.downloads} download(s))",
                    ),
                )

    def _cleanup_files(self, job_id: int) -> None:
        d = self.services.settings.exports_dir
        shutil.rmtree(d / f"work-{job_id}", ignore_errors=True)
        for p in d.glob(f"export-*-{job_id}.zip.partial"):
            p.unlink(missing_ok=True)
        exports.remove_unpublished(d, job_id)  # issue 14: a plain ZIP left by a job that died while encrypting it

    # --- one job --------------------------------------------------------------------------------------------
    def run_job(self, job_id: int) -> None:
        """Make the bundle of a job this runner claimed. Each outcome is written only while the job is still
        ``running`` (conditional): a job another runner already failed as stale (a long pause) is left as it is,
        and a bundle made meanwhile is removed, never published."""
        svc = self.services
        progress = _Progress(svc, job_id)
        try:
            result, per_camera = self._make_bundle(job_id, progress)
        except NvrError as exc:
            state = "cancelled" if exc.code == "export_cancelled" else "failed"
            self._end(job_id, state, exc.code, exc.message)
            return
        except Exception as exc:
            log.exception("export job %d failed", job_id)
            self._end(job_id, "failed", "export_failed", f"the export failed: {exc.__class__.__name__}")
            return
        now = svc.clock.now_us()
        with svc.db.session() as s:
            _unpin_job(s, job_id)
            published = _move(
                s,
                job_id,
                ("running",),
                state="done",
                finished_us=now,
                bundle_name=result.path.name,
                bundle_bytes=result.bytes,
                bundle_sha256=result.sha256,
                manifest_sha256=result.manifest_sha256,
                expires_us=now + svc.settings.export_bundle_days * exports.US_PER_DAY,
            )
            if not published:
                log.warning("export job %d was ended elsewhere while its bundle was made; bundle removed", job_id)
                result.path.unlink(missing_ok=True)
                return
            job = _reload(s, job_id)
            r = s.get(ExportRequest, job.request_id)
            assert r is not None
            job.bytes_total = job.bytes_done = max(progress.total, job.bytes_total)
            starter = s.get(User, job.started_by)
            assert starter is not None
            for camera_id, (count, nbytes) in sorted(per_camera.items()):
                audit.record(
                    s,
                    now,
                    user_actor(starter),
                    audit.INTERNAL,
                    audit.Event(
                        "export.job.done",
                        "ok",
                        camera_id=camera_id,
                        window_start_us=r.window_start_us,
                        window_end_us=r.window_end_us,
                        object_id=f"export:{r.id}",
                        purpose=r.purpose,
                        case_ref=r.case_ref,
                        destination=r.destination,
                        reason=f"job {job.id}: {count} original segment(s); bundle sha256 {result.sha256}; "
                        f"manifest sha256 {result.manifest_sha256}; key {job.key_id}",
                        bytes=nbytes,
                    ),
                )

    def _end(self, job_id: int, state: str, code: str, message: str) -> None:
        """A claimed job failed or was cancelled: remove what it wrote and its pins, and record why, once."""
        self._cleanup_files(job_id)
        with self.services.db.session() as s:
            _unpin_job(s, job_id)
            if not _move(s, job_id, ("running",), state=state, finished_us=self.services.clock.now_us()):
                return  # ended elsewhere already (failed as stale by another runner), and audited there
            self._finish(s, _reload(s, job_id), state, code, message)

    def _finish(self, s: Session, job: ExportJob, state: str, code: str, message: str) -> None:
        now = self.services.clock.now_us()
        job.state, job.finished_us, job.error_code, job.error_message = state, now, code, message
        r = s.get(ExportRequest, job.request_id)
        starter = s.get(User, job.started_by)
        assert r is not None and starter is not None
        audit.record(
            s,
            now,
            user_actor(starter),
            audit.INTERNAL,
            audit.Event(
                f"export.job.{'cancelled' if state == 'cancelled' else 'failed'}",
                "failed" if state == "failed" else "ok",
                window_start_us=r.window_start_us,
                window_end_us=r.window_end_us,
                object_id=f"export:{r.id}",
                purpose=r.purpose,
                case_ref=r.case_ref,
                reason=f"job {job.id}: {code}: {message}",
            ),
        )

    def _make_bundle(self, job_id: int, progress: _Progress) -> tuple[Any, dict[str, tuple[int, int]]]:
        from storage.bundle import write_bundle
        from storage.keyring import Keyring

        svc = self.services
        settings = svc.settings
        now = svc.now_us()  # approval expiry and the grant route are access decisions (integrity.trusted_time)
        with svc.db.session() as s:
            job = s.get(ExportJob, job_id)
            assert job is not None
            r = s.get(ExportRequest, job.request_id)
            assert r is not None
            if exports.effective_state(r, now) != "approved":
                raise NvrError(
                    Kind.FAILED_PRECONDITION,
                    "export_state_invalid",
                    f"request {r.id} is {exports.effective_state(r, now)}",
                )
            requester, starter = s.get(User, r.requester_id), s.get(User, job.started_by)
            assert requester is not None and starter is not None
            # The person who started it gets the copy: their roles and account now, not when they clicked.
            if starter.state != "active":
                raise NvrError(Kind.PERMISSION_DENIED, "user_disabled", f"{starter.username} is disabled")
            exports.require_may_copy(_principal(starter), "have an export bundle made")
            exports.check_still_covered(s, r, _principal(requester), now)
            for camera_id in exports.cameras_of(r):
                s.add(_pin(job, requester.id, camera_id, r.window_start_us, r.window_end_us, now))
        # The pins are committed: from here on the sweeper leaves the window's segments alone.
        with svc.db.session() as s:
            # the first export of a fresh install makes the first key, in the configured suite
            keys.ensure_key(s, settings.keys_dir, svc.clock.now_us(), settings.crypto_suite)
        with svc.db.session() as s:
            job = s.get(ExportJob, job_id)
            r = s.get(ExportRequest, job.request_id) if job is not None else None
            assert job is not None and r is not None
            signer = keys.active_signer(s, settings.keys_dir)
            job.key_id = signer.key_id
            database_id = database_id_of(s)
            originals = {c: rows_in(s, c, r.window_start_us, r.window_end_us) for c in exports.cameras_of(r)}
            originals = {c: rows for c, rows in originals.items() if rows}
            if not originals:
                raise NvrError(Kind.NOT_FOUND, "no_footage", "no footage is left in the window (was it deleted?)")
            _check_space(settings, sum(int(x["bytes"]) for rows in originals.values() for x in rows))
            chosen: dict[str, Checkpoint] = {}
            trusted = keys.trusted_keys(s, settings)
            for c, rows in originals.items():
                cp = checkpoints.covering(s, c, int(rows[-1]["seq"]), trusted)
                if cp is None:
                    cp = checkpoints.make_checkpoint(
                        s,
                        signer,
                        trusted_time.shared(svc.db, svc.settings, svc.clock).checkpoint_time_us(),
                        database_id,
                        continue_from=witness.continue_from(settings),
                    )
                chosen[c] = cp
                s.add(_pin(job, job.started_by, c, r.window_end_us, max(cp.created_us, r.window_end_us + 1), now))
        with svc.db.session() as s:
            job = s.get(ExportJob, job_id)
            r = s.get(ExportRequest, job.request_id) if job is not None else None
            assert job is not None and r is not None
            inp = bundle_input(
                s,
                _export_section(s, r, job),
                originals,
                chosen,
                database_id,
                (r.window_start_us, r.window_end_us),
                now,
                trusted,
            )
            per_camera = {c: (len(rows), sum(int(x["bytes"]) for x in rows)) for c, rows in originals.items()}
            dest = settings.exports_dir / f"export-{r.id}-{job.id}.zip"
        work = settings.exports_dir / f"work-{job_id}"
        work.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            result = write_bundle(
                dest,
                inp,
                signer,
                work_dir=work,
                progress=progress.update,
                cancelled=progress.cancelled,
                keyring=Keyring(settings.master_keys_dir),  # originals encrypted at rest go out decrypted
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        # Issue 14, encrypted copies: to a recipient key, only the envelope is kept (api.exports; integrity.envelope).
        result = exports.seal_for_recipient(svc.db, job_id, result, progress.cancelled)
        return result, per_camera


def bundle_input(
    s: Session,
    export: dict[str, Any],
    originals: dict[str, list[dict[str, Any]]],
    chosen: dict[str, Checkpoint],
    database_id: str,
    window: tuple[int, int],
    created_us: int,
    trusted: Mapping[str, Any],
) -> BundleInput:
    """What the bundle writer is handed: per camera its original rows (from :func:`rows_in`, their ``_path`` taken
    out), the bridge rows up to its chosen checkpoint, its registry record; the checkpoints and their keys."""
    from storage.bundle import BundleInput, CameraInput, SegmentInput

    cameras = []
    for c, rows in originals.items():
        cp = chosen[c]
        head = checkpoints.parse_body(cp.body)["cameras"][c]
        record = {k: v for k, v in registry.public_view(registry.get(s, c)).items() if k != "stream_url"}
        cameras.append(
            CameraInput(
                id=c,
                record=record,
                segments=[SegmentInput(path=row.pop("_path"), row=row) for row in rows],
                bridge=_bridge(s, c, int(rows[-1]["seq"]), int(head["seq"])),
                checkpoint_id=cp.id,
                gaps=_gaps(rows, *window),
            )
        )
    used = sorted({cp.id: cp for cp in chosen.values()}.values(), key=lambda x: x.id)
    # Only pinned keys (integrity.keys.trusted_keys) go into a bundle: a key row inserted into the database must
    # never be vouched for by the manifest the server signs.
    missing = sorted({cp.key_id for cp in used} - set(trusted))
    if missing:
        raise NvrError(
            Kind.DATA_LOSS,
            "checkpoint_key_untrusted",
            f"checkpoint key(s) {', '.join(missing)} are not pinned in the key log; refusing to build a bundle on them",
        )
    key_rows = [trusted[k] for k in sorted({cp.key_id for cp in used})]
    return BundleInput(
        export=export,
        database_id=database_id,
        created_us=created_us,
        window_start_us=window[0],
        window_end_us=window[1],
        cameras=cameras,
        checkpoints=[
            {f: getattr(cp, f) for f in ("id", "created_us", "key_id", "suite", "body", "signature")} for cp in used
        ],
        keys=[
            {"key_id": k.key_id, "suite": k.suite, "fingerprint": k.fingerprint, "pem": k.public_key_pem}
            for k in key_rows
        ],
    )


class _Progress:
    """Writes progress to the job row, refreshes the job's pins and notices cancel requests, about once a second."""

    def __init__(self, services: Services, job_id: int) -> None:
        self.services = services
        self.job_id = job_id
        self._last = 0.0
        self._cancel = False
        self._done = self.total = 0

    def update(self, done: int, total: int) -> None:
        self._done, self.total = done, total
        self._tick()

    def cancelled(self) -> bool:
        self._tick()
        return self._cancel

    def _tick(self) -> None:
        mono = time.monotonic()
        if mono - self._last < PROGRESS_EVERY_S:
            return
        self._last = mono
        now = self.services.clock.now_us()
        with self.services.db.session() as s:
            s.execute(
                update(ExportJob)
                .where(ExportJob.id == self.job_id)
                .values(bytes_done=self._done, bytes_total=self.total, heartbeat_us=now)
            )
            s.execute(update(ReadPin).where(ReadPin.request_id == _pin_name(self.job_id)).values(heartbeat_us=now))
            self._cancel = bool(s.scalar(select(ExportJob.cancel_requested).where(ExportJob.id == self.job_id)))


def _check_space(settings: Settings, originals_bytes: int) -> None:
    """A bundle holds the originals and a convenience copy of about the same size, and is built beside a working
    copy of the latter: refuse at once, rather than fill the disk the recorder may share, when that would not fit
    above the recorder's critical mark."""
    need = 3 * originals_bytes + settings.volume_min_free_bytes
    free = shutil.disk_usage(settings.exports_dir).free
    if free < need:
        raise NvrError(
            Kind.UNAVAILABLE,
            "export_no_space",
            f"the export needs about {need // 1_000_000} MB free in {settings.exports_dir} (originals "
            f"{originals_bytes // 1_000_000} MB, their convenience copy, and the recorder's reserve); "
            f"{free // 1_000_000} MB are free",
        )


def _pin_name(job_id: int) -> str:
    return f"export-{job_id}"


def _pin(job: ExportJob, user_id: int, camera_id: str, start_us: int, end_us: int, now: int) -> ReadPin:
    return ReadPin(
        grant_id=None,
        user_id=user_id,
        token_id=None,
        camera_id=camera_id,
        start_us=start_us,
        end_us=end_us,
        started_us=now,
        heartbeat_us=now,
        request_id=_pin_name(job.id),
    )


def _unpin_job(s: Session, job_id: int) -> None:
    for pin_id in s.scalars(select(ReadPin.id).where(ReadPin.request_id == _pin_name(job_id))):
        pins.unpin(s, pin_id)


def _principal(u: User) -> Principal:
    return Principal(u.id, u.username, u.full_name, u.unit, parse_roles(u.roles), token_id=0, token_kind="job")  # noqa: S106


def database_id_of(s: Session) -> str:
    value = s.scalar(select(Meta.value).where(Meta.key == "database_id"))
    return str(value or "")


def rows_in(s: Session, camera_id: str, start_us: int, end_us: int) -> list[dict[str, Any]]:
    """The segments overlapping the window, oldest first, with every field the manifest and the verifier need."""
    cols = [getattr(Segment, f) for f in _ROW_FIELDS]
    q = (
        select(*cols, Segment.volume_id, Segment.rel_path, Volume.path)
        .join(Volume, Volume.id == Segment.volume_id)
        .where(
            Segment.camera_id == camera_id,
            Segment.start_us < end_us,
            Segment.end_us > start_us,
            Segment.sweep_batch_id.is_(None),
        )
        .order_by(Segment.seq)
    )
    out = []
    for row in s.execute(q):
        d = dict(zip(_ROW_FIELDS, row[: len(_ROW_FIELDS)], strict=True))
        d["volume_id"] = row[-3]  # with rel_path, an encrypted segment's name in its key sidecar (storage.segment_io)
        d["rel_path"] = row[-2]
        d["_path"] = Path(row[-1]) / row[-2]
        out.append(d)
    return out


def _bridge(s: Session, camera_id: str, after_seq: int, to_seq: int) -> list[dict[str, Any]]:
    """Rows after the last original up to the checkpoint's seq; all must be there, or the chain cannot be shown."""
    if to_seq <= after_seq:
        return []
    cols = [getattr(Segment, f) for f in _ROW_FIELDS]
    rows = [
        dict(zip(_ROW_FIELDS, r, strict=True))
        for r in s.execute(
            select(*cols)
            .where(Segment.camera_id == camera_id, Segment.seq > after_seq, Segment.seq <= to_seq)
            .order_by(Segment.seq)
        )
    ]
    if len(rows) != to_seq - after_seq:
        raise NvrError(
            Kind.FAILED_PRECONDITION,
            "checkpoint_unavailable",
            f"camera {camera_id}: segments between the window and the nearest signed checkpoint (seq {to_seq}) were "
            "deleted, so the bundle could not prove its chain; place an evidence hold earlier next time",
        )
    return rows


def _gaps(rows: list[dict[str, Any]], start_us: int, end_us: int) -> list[dict[str, int]]:
    gaps = []
    cursor = start_us
    for row in rows:
        if int(row["start_us"]) - cursor > TOUCH_US:
            gaps.append({"start_us": cursor, "end_us": int(row["start_us"])})
        cursor = max(cursor, int(row["end_us"]))
    if end_us - cursor > TOUCH_US:
        gaps.append({"start_us": cursor, "end_us": end_us})
    return gaps


def _export_section(s: Session, r: ExportRequest, job: ExportJob) -> dict[str, Any]:
    approvers = []
    for d in exports.decisions(s, r):
        p = exports.person(s, d.approver_id) or {}
        approvers.append({**p, "unit_approved": d.unit, "decided": iso(d.decided_us), "reason": d.reason})
    if r.route == "grant" and r.grant_id is not None:
        g = s.get(Grant, r.grant_id)
        if g is not None:
            p = exports.person(s, g.granted_by) or {}
            approvers.append(
                {**p, "unit_approved": None, "decided": iso(g.created_us), "reason": f"issued export grant {g.id}"}
            )
    return {
        "request_id": r.id,
        "job_id": job.id,
        **exports.matter(s, r),
        "approvers": approvers,
    }
