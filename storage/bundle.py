"""The export bundle: one ZIP that carries footage out of the archive together with the proof that it is genuine.

Format (docs/exports/bundle.md): every member ZIP_STORED (no compression; ZIP64 when needed), members
``originals/<camera>/<seq:010d>.mp4`` (the archive's segment files, byte for byte: the evidence master; one
encrypted at rest as its plaintext, checked against the row's ``plain_digest``),
``convenience/<camera>[-partN].mp4`` (the exact window remuxed into one plain MP4, never re-encoded),
``keys/<key_id>.pem`` (every key that signed an included checkpoint), ``public_key.pem`` and ``public_key.sha256``
(the signing key and its fingerprint), ``VERIFY.txt`` (how to check it by hand), ``SHA256SUMS`` and/or
``SM3SUMS`` (every file but the manifest, its signature and the lists, by the algorithm of its digest),
``manifest.json`` (what, who, why, every digest with its algorithm, the chain rows and the signed checkpoints
that cover them) and ``manifest.sig`` (the signature over manifest.json's exact bytes, in the key's suite).

Crypto suites (docs/exports/bundle.md, "Crypto suites and encryption at rest"): each original is hashed with its
own row's ``hash_alg`` (an archive that switched suite exports SHA-256 and SM3 originals side by side), the
bundle's own files with the signing suite's hash (SM3 for ``sm2-sm3``), and the manifest names the algorithm of
every digest (``alg``, ``hash_alg``). A bundle that is all SHA-256 with stored originals is version 1, exactly as
before suites; any other is version 2.

Writing is fail-closed: every original is hashed while it is copied into the ZIP, and one whose bytes do not hash to
its catalogue row (or whose size differs, or that is missing) stops the export with an error naming camera, seq
and footage time; before any byte is written the rows are checked to chain up to the signed checkpoint, and the
checkpoints' signatures are checked. The bundle is written to ``<dest>.partial``, fsynced and renamed into place;
on any failure or cancellation the partial file and every temporary file are removed, so a bundle either exists
complete or not at all.

Speed (bench/export.py, docs/performance.md): each original is read once, in 1 MiB chunks (two buffers in rotation;
small enough to stay in the CPU cache while it is hashed, CRC-ed and written: 8 MiB chunks made copying several
times slower). Per chunk its digest runs on one worker thread while the main thread computes the ZIP CRC-32 and
writes; the bytes written go through a sink that hashes the whole bundle (``BundleResult.sha256``) on a second
worker, unless ``bundle_hash=False`` (that hash is a third of the CPU of the copy; the manifest's hash identifies
the bundle as well). hashlib and zlib release the GIL on large buffers, so these overlap. The sink is deliberately
not seekable: zipfile then writes each member strictly in order (CRC and sizes in a data descriptor after the
data, and in the central directory), so the bundle's hash is computed as it is written instead of in a second
pass. Every 128 MiB written the sink starts an ``fdatasync`` on a third worker, so the disk writes while the copy
goes on and the final ``fsync`` has little left to do (it took a third of an originals-only bundle's time
before). The convenience remux (``storage.remux``, asked not to hash its output) runs on its own thread at the
same time as the originals are copied; its files are then copied in the same way, their digest taken from that
copy, so each is hashed once. An encrypted original is decrypted on the main thread as it is copied (and once more
by the remux's reader); its key is unwrapped for every such original before the bundle file is created.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from integrity import chain, signing, suites
from nvr.clock import iso, to_datetime
from nvr.errors import Kind, NvrError
from storage import remux, segment_io
from storage.keyring import Keyring
from storage.reader import SegmentRef
from storage.volumes import fsync_dir
from storage.writer import rename_noreplace

FORMAT = "nvr-export-bundle"
VERSION = 1
"""A bundle whose every digest is SHA-256 and whose originals are the stored bytes: what verifiers of version 1
read, unchanged (the ``alg``/``hash_alg`` fields added since are extra keys to them)."""
VERSION_SUITES = 2
"""A bundle with digests in another algorithm (SM3) or decrypted originals: a version-1 verifier refuses it by its
version rather than reporting every SM3 digest as a SHA-256 mismatch."""
CHUNK = 1 << 20  # see the module docstring: larger chunks fall out of the CPU cache
PROGRESS_EVERY_S = 0.25
FLUSH_EVERY = 128 << 20  # bytes written between two background fdatasync calls (see the module docstring)
PARTIAL_SUFFIX = ".partial"

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
SUMS = "SHA256SUMS"
SUMS_FILES = {"sha256": "SHA256SUMS", "sm3": "SM3SUMS"}
"""One list per digest algorithm the bundle's files are hashed with, each in ``sha256sum`` format."""
SUMS_KEYS = {"sha256": "sha256sums_sha256", "sm3": "sm3sums_sm3"}
"""The manifest field holding each list's own digest, in the list's algorithm."""
PUBLIC_KEY = "public_key.pem"
FINGERPRINT = "public_key.sha256"
VERIFY = "VERIFY.txt"

EXPORT_KEYS = (
    "request_id",
    "job_id",
    "purpose",
    "case_ref",
    "legal_basis",
    "recipient",
    "destination",
    "route",
    "grant_id",
    "requester",
    "cosigner",
    "approvers",
)

# The standard-tools recipe. Lines starting with "  $ " are commands, run in order in one POSIX shell; the tests
# run exactly these lines (with BUNDLE and TRUSTED set) against good and tampered bundles of both suites.
_VERIFY_HEAD = """\
NVR export bundle: how to check it
==================================

This ZIP holds the original recordings (originals/), a convenience MP4 of the exact window, remuxed,
not re-encoded (convenience/), manifest.json (cameras, window, who asked, who approved, why, every
file's digest, the chain rows and the signed checkpoints that cover them), manifest.sig (the
signature over manifest.json), and the server's public key (public_key.pem).
{originals}
Crypto suite {suite}: {signature} signatures; file digests in {hashes}.

Get the server's key fingerprint through a trusted channel, NOT from this bundle: 64 hex digits
(the SHA-256 of the public key, in every suite). This bundle says it was signed by key {key_id},
fingerprint
{fingerprint}

1. With the nvr tool (needs no server and no database; checks everything, including that every
   original's catalogue row chains up to a checkpoint signed by the server):

  $ nvr verify-export export.zip --trusted-key TRUSTED-FINGERPRINT

   It prints "valid" (exit status 0), "invalid" and each failed check (1), or "unsigned" (2).

2. With standard tools only (Debian: unzip, coreutils, grep, diff, OpenSSL 3). Run these commands in
   order in an empty folder; put the bundle's path in BUNDLE and the trusted fingerprint (lowercase,
   no colons) in TRUSTED. Each must succeed (exit status 0) and print what its comment says:

  $ BUNDLE=/path/to/export.zip
  $ TRUSTED=the-64-hex-digit-fingerprint
  $ unzip -q "$BUNDLE"
   # the key is the trusted one: prints the fingerprint (no output: NOT the trusted key)
  $ openssl pkey -pubin -in public_key.pem -outform DER | sha256sum | grep "^$TRUSTED "
"""

_ORIGINALS_STORED = """
The originals are the archive's segment files, byte for byte as archived: the evidence master.
"""
_ORIGINALS_DECRYPTED = """
The originals are the archive's segment files, byte for byte as archived: the evidence master.
Segments the archive keeps encrypted (their manifest row has "encryption" and "plain_digest") are
here decrypted, byte for byte as recorded: such a file's digest is its row's "plain_digest"; the
row's "sha256" is the digest of the encrypted bytes the archive stores. The chain link of the row
covers both, so the decrypted file is tied to the signed checkpoint like any other.
"""

_SIGNATURE_STEP = {
    "ed25519": """\
   # manifest.json was signed by that key (Ed25519): prints "Signature Verified Successfully"
  $ openssl pkeyutl -verify -pubin -inkey public_key.pem -rawin -in manifest.json -sigfile manifest.sig
""",
    "sm2": """\
   # manifest.json was signed by that key (SM2 with SM3, distinguishing ID 1234567812345678):
   # prints "Signature Verified Successfully"
  $ openssl pkeyutl -verify -pubin -inkey public_key.pem -rawin -in manifest.json -sigfile manifest.sig \\
      -digest sm3 -pkeyopt distid:1234567812345678
""",
}

_SUMS_STEP = {
    "sha256": """\
   # SHA256SUMS is the list the signed manifest names: prints the manifest's line with its SHA-256
  $ grep "\\"sha256sums_sha256\\": \\"$(sha256sum SHA256SUMS | cut -c1-64)\\"" manifest.json
   # every file it lists has that SHA-256: prints "all files OK" (otherwise names each FAILED file)
  $ sha256sum --quiet -c SHA256SUMS && echo "all files OK (SHA256SUMS)"
""",
    "sm3": """\
   # SM3SUMS is the list the signed manifest names: prints the manifest's line with its SM3
  $ grep "\\"sm3sums_sm3\\": \\"$(openssl dgst -sm3 -r SM3SUMS | cut -c1-64)\\"" manifest.json
   # every file it lists has that SM3: recomputes each with openssl and compares with the list;
   # prints "all files OK", or the lines that differ ("<" as listed, ">" as found) and fails.
   # One file by hand: openssl dgst -sm3 FILE prints "SM3(FILE)= <digest>" to compare with SM3SUMS.
  $ openssl dgst -sm3 -r $(cut -c67- SM3SUMS) | sed 's/ \\*/  /' | diff SM3SUMS - && echo "all files OK (SM3SUMS)"
""",
}

_VERIFY_TAIL = """
   Standard tools do not recompute the segment chain up to the signed checkpoints; nvr verify-export
   does (docs/exports/bundle.md describes the chain so it can be recomputed with jq and {chain_tools}).
"""

_HASH_NAMES = {"sha256": "SHA-256", "sm3": "SM3"}
_SIGNATURE_NAMES = {"ed25519": "Ed25519", "sm2": "SM2"}


@dataclass
class SegmentInput:
    path: Path  # the file in the archive
    row: dict  # integrity.chain.LINKED_FIELDS + prev_link + link + rel_path


@dataclass
class CameraInput:
    id: str
    record: dict  # registry record (stream_url is dropped if present)
    segments: list[SegmentInput]  # in seq order, consecutive
    bridge: list[dict]  # rows after the last original up to the checkpoint's seq
    checkpoint_id: int
    gaps: list[dict]


@dataclass
class BundleInput:
    export: dict  # the manifest's "export" object; "window" is filled in here
    database_id: str
    created_us: int
    window_start_us: int
    window_end_us: int
    cameras: list[CameraInput]
    checkpoints: list[dict]  # {"id","created_us","key_id","suite","body","signature"}
    keys: list[dict]  # {"key_id","suite","fingerprint","pem"}: every key that signed an included checkpoint


@dataclass
class BundleResult:
    path: Path
    bytes: int
    sha256: str | None  # of the whole ZIP; None when write_bundle was called with bundle_hash=False
    manifest_sha256: str
    files: int  # members in the ZIP


def original_name(camera_id: str, seq: int) -> str:
    return f"originals/{camera_id}/{seq:010d}.mp4"


def verify_text(
    key_id: str,
    fingerprint: str,
    suite: str = suites.DEFAULT_SUITE,
    sums_algs: tuple[str, ...] = (suites.DEFAULT_HASH,),
    decrypted: bool = False,
) -> str:
    """VERIFY.txt for a bundle signed in ``suite`` whose files are listed in one sums file per ``sums_algs``
    (SHA256SUMS for ``sha256``, SM3SUMS for ``sm3``), with ``decrypted`` originals or not."""
    sig = suites.get(suite).signature
    algs = [a for a in suites.HASH_ALGS if a in sums_algs]
    text = _VERIFY_HEAD.format(
        originals=_ORIGINALS_DECRYPTED if decrypted else _ORIGINALS_STORED,
        suite=suite,
        signature=_SIGNATURE_NAMES[sig],
        hashes=" and ".join(f"{_HASH_NAMES[a]} ({SUMS_FILES[a]})" for a in algs),
        key_id=key_id,
        fingerprint=fingerprint,
    )
    text += _SIGNATURE_STEP[sig] + "".join(_SUMS_STEP[a] for a in algs)
    tools = " / ".join({"sha256": "sha256sum", "sm3": "openssl dgst -sm3"}[a] for a in algs)
    return text + _VERIFY_TAIL.format(chain_tools=tools)


def verify_commands(text: str) -> list[str]:
    """The shell commands of VERIFY.txt's recipe, in order (lines starting with ``  $ ``; a command ending in a
    backslash continues on the next line, as in a shell), each as one line."""
    out: list[str] = []
    more = False
    for line in text.splitlines():
        if more:
            out[-1] += " " + line.strip()
        elif line.startswith("  $ "):
            out.append(line[4:])
        else:
            continue
        more = out[-1].endswith("\\")
        if more:
            out[-1] = out[-1][:-1].rstrip()
    return out


def _cancelled_error() -> NvrError:
    return NvrError(Kind.FAILED_PRECONDITION, "export_cancelled", "the export was cancelled")


def _footage(cam: str, row: dict) -> str:
    return f"camera {cam} seq {row['seq']} (footage {iso(int(row['start_us']))} .. {iso(int(row['end_us']))})"


class _Sink:
    """The bundle file as zipfile sees it: append-only, not seekable, hashing every byte on a worker thread
    (unless told not to).

    A buffer passed to ``write`` must not change until :meth:`barrier`'s future is done (FIFO worker).
    """

    def __init__(self, fd: int, pool: ThreadPoolExecutor, flush_pool: ThreadPoolExecutor, hashed: bool) -> None:
        self._fd = fd
        self._pool = pool
        self._flush_pool = flush_pool
        self._sha = hashlib.sha256() if hashed else None
        self._pos = 0
        self._flushed = 0
        self._flush: Future[None] | None = None
        self._last: Future[None] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        if self._sha is not None:
            self._last = self._pool.submit(self._sha.update, view)
        n, off = len(view), 0
        while off < n:
            off += os.write(self._fd, view[off:])
        self._pos += n
        if self._pos - self._flushed >= FLUSH_EVERY and (self._flush is None or self._flush.done()):
            if self._flush is not None:
                self._flush.result()  # a write error seen by the flush is raised here
            self._flushed = self._pos
            self._flush = self._flush_pool.submit(os.fdatasync, self._fd)
        return n

    def tell(self) -> int:
        return self._pos

    def seek(self, *args: object) -> int:
        raise OSError("the bundle is written strictly in order")

    def seekable(self) -> bool:
        return False

    def flush(self) -> None:
        pass

    def barrier(self) -> Future[None] | None:
        return self._last

    def sync(self) -> None:
        """Everything written is on disk (the earlier background flushes done, then one last fsync)."""
        if self._flush is not None:
            self._flush.result()
        os.fsync(self._fd)

    def hexdigest(self) -> str | None:
        if self._last is not None:
            self._last.result()
        return None if self._sha is None else self._sha.hexdigest()


class _Phases:
    """Seconds per phase of one bundle, into the caller's dict (or nowhere)."""

    def __init__(self, into: dict[str, float] | None) -> None:
        self._into = into
        self._t = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        if self._into is not None:
            self._into[name] = self._into.get(name, 0.0) + now - self._t
        self._t = now


class _Writer:
    """One bundle being written: the ZIP, the worker threads, progress and cancellation."""

    def __init__(self, inp: BundleInput, signer: signing.Signer, partial: Path, tmp: Path, progress, cancelled):
        self.inp = inp
        self.signer = signer
        self.partial = partial
        self.tmp = tmp
        self._progress = progress
        self._cancelled = cancelled
        self.abort = threading.Event()
        self.done = 0
        self.total = 0
        self._last_report = 0.0
        self.files: list[dict] = []
        self.members = 0
        self.alg = suites.get(signer.suite).hash_alg  # the bundle's own files are hashed in the signing suite's hash
        tt = to_datetime(inp.created_us).timetuple()
        self.date_time = (max(tt.tm_year, 1980), tt.tm_mon, tt.tm_mday, tt.tm_hour, tt.tm_min, tt.tm_sec)

    # -- progress and cancellation --------------------------------------------------------------------------
    def cancelled(self) -> bool:
        return self.abort.is_set() or (self._cancelled is not None and bool(self._cancelled()))

    def _tick(self, n: int, force: bool = False) -> None:
        self.done += n
        if self._progress is None:
            return
        now = time.monotonic()
        if force or now - self._last_report >= PROGRESS_EVERY_S:
            self._last_report = now
            self._progress(self.done, max(self.total, self.done))

    # -- members -----------------------------------------------------------------------------------------------
    def _zinfo(self, name: str, size: int) -> zipfile.ZipInfo:
        zi = zipfile.ZipInfo(name, self.date_time)
        zi.compress_type = zipfile.ZIP_STORED
        zi.file_size = size  # lets zipfile choose ZIP64 up front for members over 4 GiB
        zi.external_attr = 0o100644 << 16
        zi.create_system = 3  # Unix, so the mode above is honoured by unzip
        return zi

    def add_bytes(self, zf: zipfile.ZipFile, name: str, data: bytes, listed: bool = True) -> None:
        with zf.open(self._zinfo(name, len(data)), "w") as w:
            w.write(data)
        self.members += 1
        if listed:
            self.files.append(_file_entry(name, suites.digest(self.alg, data), len(data), self.alg))

    def add_file(
        self,
        zf: zipfile.ZipFile,
        sink: _Sink,
        pool: ThreadPoolExecutor,
        name: str,
        src: Path | Callable[[], BinaryIO],
        size: int,
        alg: str,
    ) -> tuple[str, int]:
        """Copy ``src`` (a file, or an opener of a plaintext view) into member ``name``, hashing it with ``alg`` on
        the way (one read); returns (digest, bytes copied)."""
        h = suites.new_hash(alg)
        bufs = [bytearray(CHUNK), bytearray(CHUNK)]
        waits: list[tuple[Future[None], Future[None] | None] | None] = [None, None]
        copied = 0
        k = 0
        # A raw file, or segment_io's buffered plaintext view: both have readinto (BinaryIO's stub does not say so).
        opened: Any = open(src, "rb", buffering=0) if isinstance(src, Path) else src()  # noqa: SIM115 - closed below
        with opened as f, zf.open(self._zinfo(name, size), "w") as w:
            try:
                while True:
                    pending = waits[k]
                    if pending is not None:
                        for fut in pending:
                            if fut is not None:
                                fut.result()
                        waits[k] = None
                    if self.cancelled():
                        raise _cancelled_error()
                    n = f.readinto(bufs[k])
                    if not n:
                        break
                    view = memoryview(bufs[k])[:n]
                    hashed = pool.submit(h.update, view)
                    w.write(view)  # CRC-32 here, bundle hash on the sink's worker
                    waits[k] = (hashed, sink.barrier())
                    copied += n
                    self._tick(n)
                    k ^= 1
            finally:
                for pending in waits:  # never leave a worker reading a buffer that is going away
                    for fut in pending or ():
                        if fut is not None:
                            fut.exception()
        self.members += 1
        return h.hexdigest(), copied


def _check_inputs(inp: BundleInput, signer: signing.Signer) -> tuple[dict[int, dict], dict[str, dict]]:
    """Everything that can be checked before a byte is written: checkpoints and their keys, chains, files."""
    if inp.window_end_us <= inp.window_start_us:
        raise NvrError(Kind.INVALID_ARGUMENT, "bad_window", "the export window's end is not after its start")
    keys: dict[str, dict] = {}
    for k in inp.keys:
        info = signing.public_key_info(k["suite"], k["pem"])
        if info.fingerprint != k["fingerprint"] or info.key_id != k["key_id"]:
            raise NvrError(Kind.DATA_LOSS, "signing_key_mismatch", f"key {k['key_id']}: PEM and fingerprint differ")
        keys[k["key_id"]] = {**k, "pem": info.pem}
    own = signer.public
    checkpoints: dict[int, dict] = {}
    for cp in inp.checkpoints:
        key = keys.get(cp["key_id"]) or ({"suite": own.suite, "pem": own.pem} if cp["key_id"] == own.key_id else None)
        if key is None:
            raise NvrError(
                Kind.FAILED_PRECONDITION,
                "checkpoint_key_missing",
                f"checkpoint {cp['id']} was signed by key {cp['key_id']}, which the export was not given",
            )
        if not signing.verify(cp["suite"], key["pem"], cp["body"].encode("ascii"), bytes.fromhex(cp["signature"])):
            raise NvrError(
                Kind.DATA_LOSS, "checkpoint_signature_invalid", f"checkpoint {cp['id']}'s signature does not verify"
            )
        try:
            parsed = json.loads(cp["body"])
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise NvrError(Kind.DATA_LOSS, "checkpoint_body_invalid", f"checkpoint {cp['id']}'s body is not JSON")
        checkpoints[int(cp["id"])] = {**cp, "parsed": parsed}
    seen: set[str] = set()
    for cam in inp.cameras:
        if cam.id in seen:
            raise NvrError(Kind.INVALID_ARGUMENT, "camera_repeated", f"camera {cam.id} is listed twice")
        seen.add(cam.id)
        if not cam.segments:
            continue
        cam_cp = checkpoints.get(int(cam.checkpoint_id))
        if cam_cp is None:
            raise NvrError(
                Kind.FAILED_PRECONDITION,
                "checkpoint_missing",
                f"camera {cam.id}: checkpoint {cam.checkpoint_id} is not among the bundle's checkpoints",
            )
        prev: dict | None = None
        for row in [s.row for s in cam.segments] + list(cam.bridge):
            if row["camera_id"] != cam.id or (
                prev is not None and (row["seq"] != prev["seq"] + 1 or row["prev_link"] != prev["link"])
            ):
                raise NvrError(
                    Kind.DATA_LOSS, "segment_chain_broken", f"{_footage(cam.id, row)} does not follow its predecessor"
                )
            if chain.link(row["prev_link"], row) != row["link"]:
                raise NvrError(
                    Kind.DATA_LOSS, "segment_chain_broken", f"{_footage(cam.id, row)}: link does not recompute"
                )
            prev = row
        head = cam_cp["parsed"].get("cameras", {}).get(cam.id)
        if prev is None or head is None or head.get("seq") != prev["seq"] or head.get("link") != prev["link"]:
            raise NvrError(
                Kind.DATA_LOSS,
                "segment_chain_broken",
                f"camera {cam.id}: the rows do not end at checkpoint {cam.checkpoint_id}'s chain head",
            )
        for seg in cam.segments:
            try:
                size = seg.path.stat().st_size
            except FileNotFoundError:
                raise NvrError(
                    Kind.DATA_LOSS, "segment_missing", f"{_footage(cam.id, seg.row)}: file {seg.path} is missing"
                ) from None
            if size != int(seg.row["bytes"]):
                raise NvrError(
                    Kind.DATA_LOSS,
                    "segment_hash_mismatch",
                    f"{_footage(cam.id, seg.row)}: the file has {size} bytes, the catalogue records {seg.row['bytes']}",
                )
    return checkpoints, keys


def _file_entry(path: str, digest: str, size: int, alg: str) -> dict:
    """A ``files`` entry: ``sha256`` holds the digest under ``alg`` (the name is version 1's, as in segment rows)."""
    return {"path": path, "sha256": digest, "bytes": size, "alg": alg}


def _row_entry(row: dict) -> dict:
    """A segment row as the manifest carries it: the linked fields, the row's ``hash_alg`` (always written, so a
    reader never has to assume it), ``plain_digest``/``encryption`` when set, and the links."""
    entry = {f: row[f] for f in chain.LINKED_FIELDS}
    entry["hash_alg"] = chain.row_hash_alg(row)
    for f in ("plain_digest", "encryption"):
        if row.get(f) is not None:
            entry[f] = row[f]
    entry.update(prev_link=row["prev_link"], link=row["link"])
    return entry


def _hash_name(alg: str) -> str:
    return _HASH_NAMES[alg]


@dataclass
class _Plain:
    """An original encrypted at rest: the bundle carries its plaintext, read through storage.segment_io."""

    name: str  # what its wrapped data key is bound to (storage.segment_io.segment_name)
    bytes: int  # plaintext size


def _encrypted_originals(inp: BundleInput, keyring: Keyring | None) -> dict[tuple[str, int], _Plain]:
    """The originals encrypted at rest, each checked to be decryptable before a byte of the bundle is written: the
    bundle carries plaintext (its recipient has no master key), never ciphertext. No keyring, or none of a
    segment's master keys in it: ``master_key_missing``."""
    out: dict[tuple[str, int], _Plain] = {}
    for cam in inp.cameras:
        for seg in cam.segments:
            row = seg.row
            if not row.get("encryption"):
                continue
            name = segment_io.segment_name(str(row["volume_id"]), str(row["rel_path"]))
            try:
                segment_io.data_key(seg.path, keyring, name)
                size = segment_io.plain_size(seg.path)
            except FileNotFoundError:
                raise NvrError(
                    Kind.DATA_LOSS, "segment_missing", f"{_footage(cam.id, row)}: file {seg.path} is missing"
                ) from None
            except NvrError as exc:
                if exc.code == "master_key_missing":
                    raise NvrError(
                        exc.kind,
                        "master_key_missing",
                        f"{_footage(cam.id, row)} is encrypted at rest and cannot be decrypted for the bundle "
                        f"({exc.message}); nothing was exported",
                    ) from None
                raise NvrError(
                    Kind.DATA_LOSS, exc.code, f"{_footage(cam.id, row)}: {exc.message}; nothing was exported"
                ) from None
            out[(cam.id, int(row["seq"]))] = _Plain(name, size)
    return out


def _convenience(
    inp: BundleInput,
    plain: dict[tuple[str, int], _Plain],
    keyring: Keyring | None,
    out_dir: Path,
    cancelled: Callable[[], bool],
) -> dict[str, list]:
    out: dict[str, list] = {}
    for cam in inp.cameras:
        if cancelled():
            raise _cancelled_error()
        refs = []
        for s in cam.segments:
            enc = plain.get((cam.id, int(s.row["seq"])))
            row = s.row
            ref = SegmentRef(s.path, int(row["seq"]), int(row["start_us"]), int(row["end_us"]), int(row["bytes"]))
            if enc is not None:  # the reader decrypts it (storage.segment_io), its stored size checked
                ref = dataclasses.replace(ref, encryption=row["encryption"], keyring=keyring, name=enc.name)
            refs.append(ref)
        out[cam.id] = (
            remux.convenience_mp4(
                refs, inp.window_start_us, inp.window_end_us, out_dir, cam.id, cancelled, hashed=False
            )
            if refs
            else []
        )
    return out


def write_bundle(
    dest: Path,
    inp: BundleInput,
    signer: signing.Signer,
    *,
    work_dir: Path,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    bundle_hash: bool = True,
    timings: dict[str, float] | None = None,
    keyring: Keyring | None = None,
) -> BundleResult:
    """Write the signed bundle for ``inp`` at ``dest`` (see the module docstring); all or nothing.

    Digests: each original with its own row's ``hash_alg`` (an archive that switched suite exports SHA-256 and SM3
    originals side by side), every other file with the signing suite's hash (SM3 for ``sm2-sm3``); the manifest
    names the algorithm of every digest. ``keyring`` (a :class:`storage.keyring.Keyring`) decrypts originals that
    are encrypted at rest; without it such an export fails with ``master_key_missing``.

    ``bundle_hash=False`` skips the SHA-256 of the whole ZIP (``BundleResult.sha256`` is then None): about a
    quarter of the CPU time of a bundle with its convenience MP4; the manifest's hash (always computed) identifies
    the bundle too. Both stay SHA-256 in every suite: they are the server's own record of the file it handed out
    (the job row and audit events), not part of what a recipient checks.
    ``timings``, when given, receives the seconds each phase took (bench/export.py)."""
    dest = Path(dest)
    clock = _Phases(timings)
    if dest.exists():
        raise NvrError(Kind.CONFLICT, "export_exists", f"{dest} exists already")
    checkpoints, keys = _check_inputs(inp, signer)
    clock.mark("check")
    partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
    work_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bundle-", dir=work_dir))
    w = _Writer(inp, signer, partial, tmp, progress, cancelled)
    originals_total = sum(int(s.row["bytes"]) for c in inp.cameras for s in c.segments)
    w.total = 2 * originals_total  # until the convenience files' sizes are known
    fd = -1
    pools = [ThreadPoolExecutor(1, thread_name_prefix=f"bundle-{n}") for n in ("hash", "sink", "remux", "flush")]
    hash_pool, sink_pool, remux_pool, flush_pool = pools
    remuxed: Future[dict[str, list]] | None = None
    try:
        plain = _encrypted_originals(inp, keyring)
        originals_total = sum(  # bytes copied: an encrypted original's plaintext, not its stored size
            plain[(c.id, int(s.row["seq"]))].bytes if (c.id, int(s.row["seq"])) in plain else int(s.row["bytes"])
            for c in inp.cameras
            for s in c.segments
        )
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        sink = _Sink(fd, sink_pool, flush_pool, bundle_hash)
        remuxed = remux_pool.submit(_convenience, inp, plain, keyring, tmp, w.cancelled)
        cams: list[dict] = []
        with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:  # type: ignore[call-overload]  # stub wants close(); ZipFile never closes a passed file
            for cam in inp.cameras:
                segs = []
                for seg in cam.segments:
                    row = seg.row
                    name = original_name(cam.id, int(row["seq"]))
                    alg = chain.row_hash_alg(row)
                    dec = plain.get((cam.id, int(row["seq"])))
                    src: Path | Callable[[], BinaryIO] = seg.path
                    if dec is not None:
                        src = functools.partial(segment_io.open_plain, seg.path, row["encryption"], keyring, dec.name)
                    size = dec.bytes if dec else int(row["bytes"])
                    want = str(row["plain_digest"]) if dec else str(row["sha256"])
                    try:
                        digest, n = w.add_file(zf, sink, hash_pool, name, src, size, alg)
                    except FileNotFoundError:
                        what = f"{_footage(cam.id, row)}: file {seg.path} is missing"
                        raise NvrError(Kind.DATA_LOSS, "segment_missing", what) from None
                    except NvrError as exc:
                        if exc.code == "export_cancelled":
                            raise
                        what = f"{_footage(cam.id, row)} cannot be decrypted ({exc.code}: {exc.message})"
                        raise NvrError(exc.kind, exc.code, f"{what}; nothing was exported") from None
                    if digest != want or n != size:
                        which = "decrypted file's" if dec else "file's"
                        raise NvrError(
                            Kind.DATA_LOSS,
                            "segment_hash_mismatch",
                            f"{_footage(cam.id, row)}: the {which} {_hash_name(alg)} {digest} ({n} bytes) does not "
                            f"match the catalogue's {want} ({size} bytes); nothing was exported",
                        )
                    w.files.append(_file_entry(name, digest, n, alg))
                    entry = _row_entry(row)
                    entry.update(path=name, rel_path=row.get("rel_path"))
                    if dec:
                        entry.update(content="plaintext", plain_bytes=n)
                    segs.append(entry)
                record = {k: v for k, v in cam.record.items() if k != "stream_url"}
                cams.append(
                    {
                        "id": cam.id,
                        "record": record,
                        "segments": segs,
                        "bridge": [_row_entry(r) for r in cam.bridge],
                        "checkpoint_id": cam.checkpoint_id,
                        "convenience": [],
                        "gaps": list(cam.gaps),
                    }
                )
            clock.mark("originals")
            conv = remuxed.result()
            clock.mark("remux_wait")
            w.total = originals_total + sum(c.bytes for files in conv.values() for c in files)
            for entry in cams:
                for i, c in enumerate(conv.get(entry["id"], [])):
                    name = f"convenience/{entry['id']}.mp4" if i == 0 else f"convenience/{entry['id']}-part{i + 1}.mp4"
                    digest, n = w.add_file(zf, sink, hash_pool, name, c.path, c.bytes, w.alg)
                    if n != c.bytes:
                        raise NvrError(
                            Kind.DATA_LOSS, "convenience_changed", f"{name} changed between the remux and the copy"
                        )
                    w.files.append(_file_entry(name, digest, n, w.alg))
                    entry["convenience"].append(
                        {
                            "path": name,
                            "sha256": digest,
                            "bytes": n,
                            "alg": w.alg,
                            "first_us": c.first_us,
                            "end_us": c.end_us,
                        }
                    )
                    c.path.unlink(missing_ok=True)
            clock.mark("convenience_copy")
            own = signer.public
            key_entries = []
            for key_id in sorted(keys):
                k = keys[key_id]
                path = f"keys/{key_id}.pem"
                w.add_bytes(zf, path, k["pem"].encode("ascii"))
                key_entries.append(
                    {"key_id": key_id, "suite": k["suite"], "fingerprint": k["fingerprint"], "path": path}
                )
            w.add_bytes(zf, PUBLIC_KEY, own.pem.encode("ascii"))
            w.add_bytes(zf, FINGERPRINT, f"{own.fingerprint}\n".encode("ascii"))
            sums_algs = tuple(sorted({f["alg"] for f in w.files} | {w.alg}))
            text = verify_text(own.key_id, own.fingerprint, signer.suite, sums_algs, decrypted=bool(plain))
            w.add_bytes(zf, VERIFY, text.encode("utf-8"))
            w.files.sort(key=lambda f: f["path"])
            sums_digests: dict[str, str] = {}
            for alg in sums_algs:
                listed = "".join(f"{f['sha256']}  {f['path']}\n" for f in w.files if f["alg"] == alg)
                sums = listed.encode("utf-8")
                w.add_bytes(zf, SUMS_FILES[alg], sums, listed=False)
                sums_digests[alg] = suites.digest(alg, sums)
            version = VERSION if sums_algs == ("sha256",) and not plain else VERSION_SUITES
            manifest = _manifest(inp, signer, cams, checkpoints, key_entries, w.files, sums_digests, version)
            body = (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
            w.add_bytes(zf, MANIFEST, body, listed=False)
            w.add_bytes(zf, SIGNATURE, signer.sign(body), listed=False)
            zf.comment = b"NVR export bundle: see VERIFY.txt"
        bundle_sha = sink.hexdigest()
        size = sink.tell()
        sink.sync()
        os.close(fd)
        fd = -1
        rename_noreplace(partial, dest)
        fsync_dir(dest.parent)
        w._tick(0, force=True)
        clock.mark("finish")
        return BundleResult(dest, size, bundle_sha, hashlib.sha256(body).hexdigest(), w.members)
    except NvrError:
        w.abort.set()
        raise
    except OSError as exc:
        w.abort.set()
        raise NvrError(Kind.UNAVAILABLE, "export_write_failed", f"the bundle could not be written: {exc}") from None
    except BaseException:
        w.abort.set()
        raise
    finally:
        if remuxed is not None:
            with contextlib.suppress(BaseException):
                remuxed.result()
        for pool in pools:
            pool.shutdown(wait=True)
        if fd >= 0:
            os.close(fd)
        partial.unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _manifest(
    inp: BundleInput,
    signer: signing.Signer,
    cams: list[dict],
    checkpoints: dict[int, dict],
    key_entries: list[dict],
    files: list[dict],
    sums_digests: dict[str, str],
    version: int,
) -> dict:
    export: dict = {k: None for k in EXPORT_KEYS}
    export.update(inp.export)
    export["window"] = {
        "start": iso(inp.window_start_us),
        "end": iso(inp.window_end_us),
        "start_us": inp.window_start_us,
        "end_us": inp.window_end_us,
    }
    return {
        "format": FORMAT,
        "version": version,
        "created": iso(inp.created_us),
        "created_us": inp.created_us,
        "export": export,
        "crypto": {
            "suite": signer.suite,
            "key_id": signer.key_id,
            "fingerprint": signer.public.fingerprint,
            "hash": suites.get(signer.suite).hash_alg,
        },
        "database_id": inp.database_id,
        "cameras": cams,
        "checkpoints": [
            {k: cp[k] for k in ("id", "created_us", "key_id", "suite", "body", "signature")}
            for _, cp in sorted(checkpoints.items())
        ],
        "keys": key_entries,
        "files": files,
        **{SUMS_KEYS[alg]: d for alg, d in sums_digests.items()},
    }


__all__ = [
    "BundleInput",
    "BundleResult",
    "CameraInput",
    "SegmentInput",
    "verify_commands",
    "verify_text",
    "write_bundle",
]
