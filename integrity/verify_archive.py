"""The whole-archive check behind ``nvr verify``, the re-hashing it shares with the scrubber, and integrity findings.

What is checked, each problem named with its camera, sequence number and footage time:

- every segment row's file is re-hashed and compared with the row (``hash_mismatch``; a file that is gone is
  ``missing_file``); rows the sweeper has marked for deletion (``sweep_batch_id`` set) are skipped, their files may
  already be gone;
- every camera's chain is recomputed across the sweeper's tombstones (:func:`integrity.chain.verify_with_tombstones`):
  a number missing without a tombstone is ``missing_row``, a link that does not recompute or join is
  ``chain_break`` (an edited row, a forged tombstone);
- every file in a volume's segment tree must be named by a row (``unknown_file``); files of segments being written
  (``.partial``, the ``.json`` journal, a finished file whose journal is still beside it) are not segments yet;
- every checkpoint's signature must verify with a key the database knows (``bad_signature``), and the newest valid
  checkpoint must agree with the archive: its link for each camera's seq equals the row's (else ``chain_break``), and
  no camera's rows end before the seq it recorded (the newest rows deleted: ``missing_row``); the same for the
  audit log's head;
- the audit log's chain (:func:`integrity.audit_log.verify`): ``chain_break`` with subject ``audit event N``.

Memory stays flat: rows are read in keyset batches (per camera for chains, by id for hashes), each batch in a short
transaction of its own, and volumes are walked one directory at a time. A problem a concurrent sweep or recorder
could have caused (a row deleted while we read, a file renamed into place before its row is committed) is checked
again before it is reported.

Hashing reads in large chunks into a reused buffer (``readinto``), and :func:`hash_files` runs two threads so one
file is read while another is hashed (``hashlib`` releases the GIL): OpenSSL's speed, not Python's. Each file is
hashed with its row's ``hash_alg`` (SHA-256, or SM3 under the ``sm2-sm3`` suite; integrity.suites), and each chain
link recomputed with its row's, so an archive that switched suite verifies old and new rows alike.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from integrity import audit_log, chain, suites
from integrity.problems import Problem
from nvr.config import Settings
from nvr.db import Database
from nvr.errors import NvrError
from nvr.models import (
    AuditEvent,
    Camera,
    IntegrityFinding,
    Segment,
    SegmentTombstone,
    Volume,
)

log = logging.getLogger(__name__)

KINDS = (
    "hash_mismatch",
    "missing_file",
    "missing_row",
    "chain_break",
    "unknown_file",
    "bad_signature",
    "untrusted_key",
    "missing_checkpoint",
    "checkpoint_chain_break",
    "witness_mismatch",
    "forged_tombstone",
    "registry_mismatch",
    "time_inconsistent",
    "unverifiable",
)
"""Every finding kind, a stable name (docs/integrity/verify.md)."""
LEGAL_FLOOR_DAYS = 30
"""The retention floor no setting may go below (nvr.config: retention_floor_days >= 30)."""
CHUNK = 8 << 20
"""Read size for hashing: large reads keep the per-call overhead far below OpenSSL's hashing time."""
THREADS = 2

# --- which files are segments (the layout facts of storage.layout / storage.volumes, which integrity may not import)
SEGMENT_SUFFIXES = (".mp4", ".mov")
"""storage.layout.SUFFIXES: a finished segment file ends with one of these."""
IN_PROGRESS_SUFFIXES = (".partial", ".json", ".corrupt", ".recovering", ".key", ".fenced")
"""A segment being written (``.partial``), its journal (``.json``) and what start-up recovery moved aside for a
person to look at (``.partial.corrupt``), an encrypted segment's wrapped data key (``.key``, storage.keyring;
checked beside its segment instead), and a segment refused because its node lost the camera's lease (``.fenced``,
nvr.cluster; reported when it happened): none of them is a segment a row must name."""
VOLUME_IDENTITY_FILE = ".nvr-volume.json"
"""storage.volumes.IDENTITY_FILE: a mounted volume carries it at its top."""
NOT_SEGMENT_DIRS = ("lost+found",)


def is_segment_tree_file(rel_path: str) -> bool:
    """True for a file of a volume's segment tree (``<camera>/<YYYY>/<MM>/<DD>/<HH>/<name>``) that a row must name:
    anything there except a segment being written, its journal, or recovery's quarantine. Top-level files (the
    identity file) and hidden or ``lost+found`` folders are not part of the tree."""
    parts = rel_path.split("/")
    if len(parts) < 2 or parts[0] in NOT_SEGMENT_DIRS or parts[0].startswith("."):
        return False
    return not parts[-1].endswith(IN_PROGRESS_SUFFIXES)


def journal_beside(path: Path) -> Path:
    """The journal the writer keeps beside a segment until its row is committed (storage.writer)."""
    name = path.name
    for suffix in SEGMENT_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(name + ".json")


# --- hashing ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileHash:
    sha256: str
    """The digest under ``hash_alg`` (the name is from when SHA-256 was the only one, as the row's column)."""
    size: int
    hash_alg: str = suites.DEFAULT_HASH


def hash_file(
    path: str | os.PathLike[str],
    buf: bytearray | None = None,
    on_chunk: Callable[[int], None] | None = None,
    hash_alg: str = suites.DEFAULT_HASH,
) -> FileHash:
    """Digest (``hash_alg``: ``sha256`` or ``sm3``) and size of a file, read with ``readinto`` into ``buf`` (reused
    across calls; ``CHUNK`` bytes by default). ``on_chunk(n)`` is called after each read (progress, or the
    scrubber's rate limit)."""
    view = memoryview(buf if buf is not None else bytearray(CHUNK))
    h = suites.new_hash(hash_alg)
    size = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):  # type: ignore[attr-defined]
            h.update(view[:n])
            size += n
            if on_chunk is not None:
                on_chunk(n)
    return FileHash(h.hexdigest(), size, hash_alg)


T = TypeVar("T")


def hash_files(
    items: Iterable[T],
    path_of: Callable[[T], Path],
    threads: int = THREADS,
    chunk: int = CHUNK,
    alg_of: Callable[[T], str] | None = None,
) -> Iterator[tuple[T, FileHash | OSError]]:
    """Hash each item's file on ``threads`` threads, yielding ``(item, FileHash or the OSError)`` in input order;
    ``alg_of(item)``: the algorithm to hash it with (default SHA-256).

    At most ``2 * threads`` files are in flight, so memory is flat however many items come; each thread reuses its
    own buffer. With two threads one file is read while the other is hashed."""
    local = threading.local()

    def work(item: T) -> FileHash | OSError:
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = bytearray(chunk)
        try:
            alg = alg_of(item) if alg_of is not None else suites.DEFAULT_HASH
            return hash_file(path_of(item), buf, hash_alg=alg)
        except OSError as exc:
            return exc

    if threads <= 1:
        for item in items:
            yield item, work(item)
        return
    pending: deque[tuple[T, Future[FileHash | OSError]]] = deque()
    with ThreadPoolExecutor(threads, thread_name_prefix="nvr-hash") as pool:
        for item in items:
            pending.append((item, pool.submit(work, item)))
            if len(pending) >= 2 * threads:
                done, fut = pending.popleft()
                yield done, fut.result()
        while pending:
            done, fut = pending.popleft()
            yield done, fut.result()


# --- problems and the report -----------------------------------------------------------------------------------
@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    segments: int = 0
    """Segment files re-hashed."""
    bytes: int = 0
    """Bytes re-hashed."""
    rows: int = 0
    """Segment rows whose chain was recomputed."""
    files: int = 0
    """Files seen in the volumes' segment trees."""
    cameras: int = 0
    checkpoints: int = 0
    audit_events: int = 0
    seconds: float = 0.0
    encrypted: int = 0
    """Segments encrypted at rest among those re-hashed."""
    plaintext_checked: int = 0
    """Of those, how many were decrypted with the master key and their plaintext digest checked too."""
    plaintext_unchecked: str | None = None
    """Why encrypted segments' plaintext was not checked (no master key), if it was not."""

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def counts(self) -> dict[str, int]:
        c = Counter(p.kind for p in self.problems)
        return {k: c.get(k, 0) for k in KINDS}

    @property
    def gb_per_second(self) -> float:
        return self.bytes / 1e9 / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": [p.as_dict() for p in self.problems],
            "counts": self.counts,
            "segments": self.segments,
            "bytes": self.bytes,
            "rows": self.rows,
            "files": self.files,
            "cameras": self.cameras,
            "checkpoints": self.checkpoints,
            "audit_events": self.audit_events,
            "seconds": round(self.seconds, 3),
            "gb_per_second": round(self.gb_per_second, 3),
            "encrypted": self.encrypted,
            "plaintext_checked": self.plaintext_checked,
            "plaintext_unchecked": self.plaintext_unchecked,
        }


PlainCheck = Callable[[Any, Path], "str | None"]
"""``plain_check(row, path)`` for a segment encrypted at rest whose stored bytes matched: decrypt it and compare its
plaintext with ``row.plain_digest``; returns what is wrong (None: it matches). Raises ``NvrError`` with a
``master_key_*`` code when no master key opens the segment's data key: that is reported as ``missing_file`` (the
footage cannot be had). Without a ``plain_check`` (an auditor with no master key) only stored bytes are checked and
the report says so. The caller supplies it (storage.segment_io decrypts; integrity does not import storage)."""


Progress = Callable[[int, int], None]
"""``progress(segments_done, bytes_done)`` as hashing goes (called from the calling thread)."""


def segment_subject(camera_id: str, seq: int) -> str:
    return f"segment {camera_id} #{seq}"


# --- the check -------------------------------------------------------------------------------------------------
def total_bytes(db: Database) -> tuple[int, int]:
    """(segments, bytes) that :func:`verify_archive` will re-hash: for a progress bar's total."""
    with db.session() as s:
        n, b = s.execute(select(func.count(), func.sum(Segment.bytes)).where(Segment.sweep_batch_id.is_(None))).one()
    return int(n or 0), int(b or 0)


def verify_archive(
    db: Database,
    settings: Settings,
    progress: Progress | None = None,
    threads: int = THREADS,
    batch: int = 2000,
    *,
    against: Iterable[Path] = (),
    plain_check: PlainCheck | None = None,
) -> Report:
    """Check the whole archive (see the module docstring); read-only. Problems come sorted by camera, seq, kind.
    ``settings`` says where the pinned keys and witnesses are; ``against``: checkpoint copies an auditor kept;
    ``plain_check``: how to check an encrypted segment's plaintext (without it only the stored bytes are)."""
    from integrity import checkpoint_verify, registry_check, tombstones

    started = time.monotonic()
    report = Report()
    problems: list[Problem] = []
    volumes: dict[str, Path] = {}
    cameras: list[str] = []
    heads: dict[str, tuple[int, str]] = {}
    cps = checkpoint_verify.Result()

    def stage(name: str, run: Callable[[], list[Problem] | None]) -> None:
        """One part of the check; a damaged or half-restored database makes it ``unverifiable``, not a crash."""
        try:
            problems.extend(run() or [])
        except (SQLAlchemyError, NvrError, OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("verify: %s cannot be checked: %s", name, exc)
            what = getattr(exc, "message", None) or str(exc).splitlines()[0][:300]
            problems.append(Problem("unverifiable", None, None, None, name, f"cannot be checked: {what}"))

    def catalogue() -> None:
        with db.session() as s:
            volumes.update({v.id: Path(v.path) for v in s.scalars(select(Volume))})
            cameras.extend(s.scalars(select(Camera.id).order_by(Camera.id)))
        report.cameras = len(cameras)

    def chains() -> list[Problem]:
        out: list[Problem] = []
        for cam in cameras:
            found, rows, head = _camera_chain(db, cam, batch)
            if found:  # a sweep running beside us can delete rows between two reads: look again before reporting
                found, rows, head = _camera_chain(db, cam, batch)
            out += found
            report.rows += rows
            heads[cam] = head
        return out

    def files() -> list[Problem]:
        mounted = {vid: (p / VOLUME_IDENTITY_FILE).is_file() for vid, p in volumes.items()}
        out = _rehash(db, volumes, mounted, report, progress, threads, batch, plain_check)
        for vid, path in volumes.items():
            if mounted[vid]:
                out += _unknown_files(db, vid, path, report)
        return out

    def chain_of_checkpoints() -> list[Problem]:
        nonlocal cps
        cps = checkpoint_verify.check(db, settings, heads, against=against)
        report.checkpoints = cps.checkpoints
        return cps.problems

    def registry() -> list[Problem]:
        with db.session() as s:
            return registry_check.check_registry(s, cps.newest_body)

    stage("catalogue", catalogue)
    stage("segment chains", chains)
    stage("segment files", files)
    stage("checkpoints", chain_of_checkpoints)
    stage("registry", registry)
    # Each run is judged by the floor and policy minimum its own event recorded, never below the legal 30 days:
    # raising the floor later must not turn earlier, lawful deletions into findings.
    stage("tombstones", lambda: tombstones.check_tombstones(db, LEGAL_FLOOR_DAYS))
    stage("audit log", lambda: _audit(db, report))

    order = {k: i for i, k in enumerate(KINDS)}
    problems.sort(key=lambda p: (p.camera_id or "", p.seq if p.seq is not None else -1, order.get(p.kind, 99)))
    report.problems = problems
    report.seconds = time.monotonic() - started
    return report


def _camera_chain(db: Database, camera_id: str, batch: int) -> tuple[list[Problem], int, tuple[int, str]]:
    """Recompute one camera's chain in batches; returns (problems, rows, (head seq, head link))."""
    T = SegmentTombstone
    with db.session() as s:
        tombs = [
            dict(r)
            for r in s.execute(
                select(T.first_seq, T.last_seq, T.prev_link, T.last_link, T.start_us, T.end_us)
                .where(T.camera_id == camera_id)
                .order_by(T.first_seq)
            ).mappings()
        ]
    cols = [getattr(Segment, f) for f in (*chain.LINKED_FIELDS, *chain.OPTIONAL_FIELDS, "prev_link", "link")]
    genesis: str | None = None  # the camera's genesis, of the algorithm of its first segment
    expected_seq, expected_prev, prev_name, prev_end = 1, "", "genesis", None
    problems: list[Problem] = []
    ti, last, nrows = 0, 0, 0
    while True:
        with db.session() as s:
            rows = [
                dict(r)
                for r in s.execute(
                    select(*cols).where(Segment.camera_id == camera_id, Segment.seq > last).order_by(Segment.seq)
                    .limit(batch)
                ).mappings()
            ]  # fmt: skip
        final = len(rows) < batch
        upper = None if final else int(rows[-1]["seq"])
        unknown = [r for r in rows if not _known_alg(r.get("hash_alg"))]
        for r in unknown:  # never written by the server: the row was edited; checked on as SHA-256 to go on
            problems.append(
                Problem(
                    "chain_break",
                    camera_id,
                    int(r["seq"]),
                    int(r["start_us"]),
                    segment_subject(camera_id, int(r["seq"])),
                    f"its hash_alg {str(r['hash_alg'])[:40]!r} is not a known algorithm "
                    f"({', '.join(suites.HASH_ALGS)}): the row was edited",
                )
            )
            r["hash_alg"] = suites.DEFAULT_HASH
        these = []
        while ti < len(tombs) and (upper is None or tombs[ti]["first_seq"] <= upper):
            these.append(tombs[ti])
            ti += 1
        if genesis is None and (rows or tombs):
            genesis = _camera_genesis(camera_id, rows, tombs)
            expected_prev = genesis
        if rows or these:
            carry, carry_prev = [], prev_name
            carry_name = f"last link of tombstone seq 1..{expected_seq - 1}"
            if expected_seq > 1:  # where the previous batch ended, as a tombstone standing for everything before
                carry = [
                    {"first_seq": 1, "last_seq": expected_seq - 1, "prev_link": genesis, "last_link": expected_prev}
                ]
            found = chain.verify_with_tombstones(camera_id, rows, carry + these)
            # The state before each element, to name what a gap lacks and where in time it lies.
            before: dict[int, tuple[int, int | None]] = {}
            by_seq: dict[int, dict[str, Any]] = {}
            elements = sorted([(int(r["seq"]), 0, r) for r in rows] + [(int(t["first_seq"]), 1, t) for t in these])
            for seq, is_tomb, el in elements:
                before.setdefault(seq, (expected_seq, prev_end))
                by_seq.setdefault(seq, {**el, "_tomb": bool(is_tomb)})
                if is_tomb:
                    expected_seq, expected_prev = int(el["last_seq"]) + 1, str(el["last_link"])
                    prev_name = f"last link of tombstone seq {seq}..{el['last_seq']}"
                else:
                    expected_seq, expected_prev, prev_name = seq + 1, str(el["link"]), f"link of seq {seq}"
                prev_end = int(el["end_us"])
            for p in found:
                detail = p.detail.replace(carry_name, carry_prev) if carry else p.detail
                problems.append(_chain_problem(camera_id, p.kind, p.seq, detail, before, by_seq))
            nrows += len(rows)
        if final:
            break
        last = int(rows[-1]["seq"])
    return problems, nrows, (expected_seq - 1, expected_prev or chain.genesis(camera_id))


def _known_alg(alg: object) -> bool:
    return alg is None or alg in suites.HASH_ALGS


def _camera_genesis(camera_id: str, rows: list[dict[str, Any]], tombs: list[dict[str, Any]]) -> str:
    """The genesis the camera's chain starts from: that of its first segment's algorithm, or, when retention has
    deleted the first segments, the genesis of whichever algorithm the first tombstone continues from."""
    first_row = rows[0] if rows else None
    first_tomb = tombs[0] if tombs else None
    if first_row is not None and (first_tomb is None or int(first_row["seq"]) < int(first_tomb["first_seq"])):
        return chain.genesis(camera_id, chain.row_hash_alg(first_row))
    if first_tomb is not None:
        for alg in suites.HASH_ALGS:
            if chain.genesis(camera_id, alg) == first_tomb["prev_link"]:
                return chain.genesis(camera_id, alg)
    return chain.genesis(camera_id)


def _chain_problem(
    camera_id: str,
    kind: str,
    seq: int,
    detail: str,
    before: dict[int, tuple[int, int | None]],
    by_seq: dict[int, dict[str, Any]],
) -> Problem:
    el = by_seq.get(seq, {})
    is_tomb = bool(el.get("_tomb"))
    start = el.get("start_us")
    subject = f"tombstone {camera_id} #{seq}..#{el['last_seq']}" if is_tomb else segment_subject(camera_id, seq)
    if kind == "seq_gap":
        expected, prev_end = before.get(seq, (seq, None))
        if seq > expected:
            first, lastm = expected, seq - 1
            span = f"#{first}" if first == lastm else f"#{first}..#{lastm}"
            return Problem(
                "missing_row",
                camera_id,
                first,
                prev_end if prev_end is not None else start,
                f"segment {camera_id} {span}",
                f"{lastm - first + 1} segment row(s) missing with no tombstone ({detail})",
            )
        return Problem("chain_break", camera_id, seq, start, subject, f"sequence overlaps: {detail}")
    return Problem("chain_break", camera_id, seq, start, subject, detail)


def _rows_by_id(db: Database, batch: int) -> Iterator[Any]:
    last = 0
    cols = (
        Segment.id,
        Segment.camera_id,
        Segment.seq,
        Segment.volume_id,
        Segment.rel_path,
        Segment.bytes,
        Segment.sha256,
        Segment.hash_alg,
        Segment.start_us,
        Segment.plain_digest,
        Segment.encryption,
    )
    while True:
        with db.session() as s:
            rows = s.execute(
                select(*cols)
                .where(Segment.id > last, Segment.sweep_batch_id.is_(None))
                .order_by(Segment.id)
                .limit(batch)
            ).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].id


def row_alg(row: Any) -> str:
    """The algorithm to re-hash a row's file with: its ``hash_alg`` (SHA-256 for rows without one, or with one the
    server never writes: :func:`check_file` reports that as a mismatch)."""
    alg = getattr(row, "hash_alg", None)
    return alg if alg in suites.HASH_ALGS else suites.DEFAULT_HASH


def check_file(row: Any, result: FileHash | OSError, path: Path, unmounted: Path | None = None) -> Problem | None:
    """Compare one re-hashed file with its row (``row`` has camera_id, seq, start_us, bytes, sha256 and
    hash_alg, the file hashed with :func:`row_alg`); ``unmounted``: the row's volume folder, when it lacks its
    identity file."""
    subject = segment_subject(row.camera_id, row.seq)
    if isinstance(result, OSError):
        if unmounted is not None:
            why = f"its volume {unmounted} is not mounted (no identity file)"
        elif isinstance(result, FileNotFoundError | NotADirectoryError):
            why = "the file does not exist"
        else:
            why = f"the file cannot be read ({result.strerror or result})"
        return Problem("missing_file", row.camera_id, row.seq, row.start_us, subject, f"{path}: {why}")
    recorded_alg = getattr(row, "hash_alg", None) or suites.DEFAULT_HASH
    if recorded_alg not in suites.HASH_ALGS:
        return Problem(
            "hash_mismatch",
            row.camera_id,
            row.seq,
            row.start_us,
            subject,
            f"{path}: the row's hash_alg {str(recorded_alg)[:40]!r} is not a known algorithm, so its digest cannot be "
            "checked (the row was edited)",
        )
    if result.size != row.bytes or result.sha256 != row.sha256:
        what = [f"size {result.size} != {row.bytes}"] if result.size != row.bytes else []
        if result.sha256 != row.sha256:
            what.append(f"{result.hash_alg} {result.sha256[:16]}… != recorded {str(row.sha256)[:16]}…")
        return Problem("hash_mismatch", row.camera_id, row.seq, row.start_us, subject, f"{path}: {', '.join(what)}")
    return None


SIDECAR_SUFFIX = ".key"
"""storage.keyring.SIDECAR_SUFFIX: an encrypted segment's wrapped data key, ``<segment>.key``."""


def check_sidecar(row: Any, path: Path) -> Problem | None:
    """An encrypted segment (``row.encryption`` set) without its wrapped data key beside it is footage nobody can
    decrypt any more: ``missing_file``, as for the segment itself (the sidecar is outside the hash by design, so
    that re-wrapping never touches footage; its presence is checked here instead)."""
    if getattr(row, "encryption", None) is None:
        return None
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    if sidecar.is_file():
        return None
    return Problem(
        "missing_file",
        row.camera_id,
        row.seq,
        row.start_us,
        segment_subject(row.camera_id, row.seq),
        f"{sidecar}: the segment's wrapped data key is missing (without it the footage cannot be decrypted)",
    )


def still_current(db: Database, segment_id: int, sha256: str) -> bool:
    """True while the row still exists unchanged and is not being deleted (a sweep may have taken it meanwhile)."""
    with db.session() as s:
        row = s.execute(select(Segment.sha256, Segment.sweep_batch_id).where(Segment.id == segment_id)).first()
    return row is not None and row.sweep_batch_id is None and row.sha256 == sha256


def _rehash(
    db: Database,
    volumes: dict[str, Path],
    mounted: dict[str, bool],
    report: Report,
    progress: Progress | None,
    threads: int,
    batch: int,
    plain_check: PlainCheck | None = None,
) -> list[Problem]:
    problems: list[Problem] = []

    def path_of(row: Any) -> Path:
        return volumes[row.volume_id] / row.rel_path

    def encrypted(row: Any, path: Path) -> Problem | None:
        """An encrypted segment whose stored bytes match: its wrapped key must be there, and with the master key
        its plaintext must be what the row (and so the chain) says."""
        report.encrypted += 1
        subject = segment_subject(row.camera_id, row.seq)
        missing = check_sidecar(row, path)
        if missing is not None:
            return missing
        if plain_check is None:
            report.plaintext_unchecked = "not asked to decrypt (stored bytes only)"
            return None
        try:
            wrong = plain_check(row, path)
        except NvrError as exc:
            if exc.code.startswith("master_key"):
                # Footage no master key here opens is footage lost as surely as a deleted file (crypto-shredding
                # by deleting key files): a finding, unless the caller asked for the stored bytes only.
                report.plaintext_unchecked = f"{exc.code}: {exc.message}"
                return Problem(
                    "missing_file",
                    row.camera_id,
                    row.seq,
                    row.start_us,
                    subject,
                    f"{path}: no master key here opens its data key ({exc.code}: {exc.message})",
                )
            wrong = f"{exc.code}: {exc.message}"
        report.plaintext_checked += 1
        if wrong is None:
            return None
        return Problem("hash_mismatch", row.camera_id, row.seq, row.start_us, subject, f"{path}: plaintext: {wrong}")

    for row, result in hash_files(_rows_by_id(db, batch), path_of, threads, alg_of=row_alg):
        if isinstance(result, FileHash):
            report.segments += 1
            report.bytes += result.size
        unmounted = None if mounted.get(row.volume_id) else volumes[row.volume_id]
        p = check_file(row, result, path_of(row), unmounted)
        if p is None and getattr(row, "encryption", None) is not None:
            p = encrypted(row, path_of(row))
        if p is not None and still_current(db, row.id, row.sha256):
            problems.append(p)
        if progress is not None:
            progress(report.segments, report.bytes)
    return problems


def _unknown_files(db: Database, volume_id: str, root: Path, report: Report) -> list[Problem]:
    """Files in the volume's segment tree no row names, one directory at a time."""
    problems: list[Problem] = []
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as exc:
            log.warning("verify: cannot list %s: %s", d, exc)
            continue
        files = []
        for e in entries:
            rel = os.path.relpath(e.path, root).replace(os.sep, "/")
            if e.is_dir(follow_symlinks=False):
                if d != root or (e.name not in NOT_SEGMENT_DIRS and not e.name.startswith(".")):
                    stack.append(Path(e.path))
            elif d != root and is_segment_tree_file(rel):
                files.append(rel)
        report.files += len(files)
        if files:
            problems += _unnamed(db, volume_id, root, files)
    return problems


def _start_of(name: str) -> int | None:
    stem = name.split(".", 1)[0].split("-", 1)[0]
    return int(stem) if stem.isdigit() else None


def _unnamed(db: Database, volume_id: str, root: Path, rels: list[str]) -> list[Problem]:
    camera_id = rels[0].split("/", 1)[0]
    starts = [t for t in (_start_of(r.rsplit("/", 1)[-1]) for r in rels) if t is not None]
    with db.session() as s:
        named: set[str] = set()
        if starts:  # the file names carry the start time: the (camera, start) index finds their rows
            named = set(
                s.scalars(
                    select(Segment.rel_path).where(
                        Segment.camera_id == camera_id,
                        Segment.volume_id == volume_id,
                        Segment.start_us >= min(starts),
                        Segment.start_us <= max(starts),
                    )
                )
            )
    out = []
    for rel in rels:
        if rel in named:
            continue
        path = root / rel
        if journal_beside(path).exists() or not path.exists():
            continue  # being registered (its journal is still there), or gone since we listed it
        with db.session() as s:  # a row whose times were edited no longer matches its name: look it up exactly
            if s.scalar(
                select(Segment.id).where(
                    Segment.camera_id == camera_id, Segment.volume_id == volume_id, Segment.rel_path == rel
                )
            ):
                continue
        out.append(
            Problem(
                "unknown_file",
                camera_id,
                None,
                _start_of(path.name),
                str(path),
                "a file in the segment tree that no segment row names",
            )
        )
    return out


def _audit(db: Database, report: Report) -> list[Problem]:
    with db.session() as s:
        checked, problem = audit_log.verify(s)
        report.audit_events = checked
        if problem is None:
            return []
        ev = s.execute(select(AuditEvent.camera_id, AuditEvent.at_us).where(AuditEvent.seq == problem.seq)).first()
    camera, at = (ev.camera_id, ev.at_us) if ev is not None else (None, None)
    return [Problem("chain_break", camera, None, at, f"audit event {problem.seq}", f"{problem.kind}: {problem.detail}")]


# --- findings: what the scrubber and `nvr verify --record` keep --------------------------------------------------
def open_findings(session: Session) -> list[IntegrityFinding]:
    """Every unresolved finding, oldest first: while there is one, /health carries ``integrity_mismatch``."""
    return list(
        session.scalars(
            select(IntegrityFinding).where(IntegrityFinding.resolved_us.is_(None)).order_by(IntegrityFinding.id)
        )
    )


def open_counts(session: Session) -> dict[str, int]:
    """Open findings per kind (every kind present, zero when none)."""
    rows = session.execute(
        select(IntegrityFinding.kind, func.count())
        .where(IntegrityFinding.resolved_us.is_(None))
        .group_by(IntegrityFinding.kind)
    ).all()
    found = {str(k): int(n) for k, n in rows}
    return {k: found.get(k, 0) for k in sorted(set(KINDS) | set(found))}


def find_open(session: Session, p: Problem) -> IntegrityFinding | None:
    q = select(IntegrityFinding).where(
        IntegrityFinding.resolved_us.is_(None),
        IntegrityFinding.kind == p.kind,
        IntegrityFinding.subject == p.subject,
    )
    q = q.where(
        IntegrityFinding.camera_id.is_(None) if p.camera_id is None else IntegrityFinding.camera_id == p.camera_id
    )
    q = q.where(IntegrityFinding.seq.is_(None) if p.seq is None else IntegrityFinding.seq == p.seq)
    return session.scalars(q.limit(1)).first()


def open_finding(session: Session, p: Problem, source: str, now_us: int) -> IntegrityFinding | None:
    """Record ``p`` unless the same problem is already open; returns the new row, or None when it was open."""
    if find_open(session, p) is not None:
        return None
    row = IntegrityFinding(
        kind=p.kind,
        camera_id=p.camera_id,
        seq=p.seq,
        at_us=p.at_us,
        subject=p.subject,
        detail=p.detail,
        source=source,
        found_us=now_us,
    )
    session.add(row)
    session.flush()
    return row


def record_findings(session: Session, problems: list[Problem], now_us: int) -> tuple[int, int]:
    """Store a whole-archive check's problems as findings (``source="verify"``). Open findings this full check no
    longer sees are marked intact again (``intact_us``), never resolved: a person resolves them with a note
    (integrity.findings.resolve). A finding seen again loses its ``intact_us``. Returns (new, intact again)."""
    new = 0
    for p in problems:
        if open_finding(session, p, "verify", now_us) is not None:
            new += 1
        else:
            f = find_open(session, p)
            if f is not None:
                f.intact_us = None
    seen = {p.key for p in problems}
    intact = 0
    for f in open_findings(session):
        if (f.kind, f.camera_id, f.seq, f.subject) not in seen and f.intact_us is None:
            f.intact_us = now_us
            intact += 1
    session.flush()
    return new, intact
