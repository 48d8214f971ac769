"""Writing one segment: fragmented MP4, hashed while written, finished in the crash-safe order.

Order (docs/design/crash-safety.md): journal written and fsynced → media appended to ``.partial`` → muxer closed
→ file fsynced → renamed to its final name → directory fsynced → (caller) row inserted in one transaction →
journal removed. A crash anywhere leaves either a journal start-up recovery can act on, or a finished segment.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import av

from integrity import suites
from integrity.hashing import HashingWriter
from integrity.suites import DEFAULT_HASH, check_hash_alg
from storage import layout
from storage.crypt import EncryptingWriter
from storage.keyring import MasterKey, wrap, write_sidecar
from storage.segment_io import segment_name, sidecar_path
from storage.volumes import VolumeInfo, fsync_dir

log = logging.getLogger(__name__)

# One fragment per GOP, written as soon as the next keyframe arrives, nothing rewritten afterwards: a crash loses
# at most the fragment being built, and the file can be hashed while it is written.
MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof"


@dataclass(frozen=True)
class FinishedFile:
    rel_path: str
    sha256: str
    """The file's digest under ``hash_alg`` (the name is from when SHA-256 was the only one)."""
    bytes: int
    hash_alg: str = DEFAULT_HASH
    plain_digest: str | None = None
    """For an encrypted segment, the digest of its plaintext (the fMP4) under ``hash_alg``; ``sha256`` is then the
    digest of the stored bytes."""
    encryption: str | None = None
    """The cipher the stored bytes are encrypted with (storage.crypt), or None for a plain file."""


@dataclass(frozen=True)
class Journal:
    camera_id: str
    volume_id: str
    start_us: int
    clock_offset_us: int
    codecs: str
    rel_path: str
    hash_alg: str = DEFAULT_HASH
    """The algorithm the segment is hashed with; journals written before suites existed load as SHA-256."""
    encryption: str | None = None
    """The cipher of an encrypted segment (its data key is in the sidecar written before the media file)."""
    node_id: str | None = None
    lease_token: int | None = None
    """The node and camera lease token the segment was begun under (nvr.cluster): recovery registers it only
    under that fence."""

    @property
    def fence(self) -> tuple[str, int] | None:
        return None if self.node_id is None or self.lease_token is None else (self.node_id, self.lease_token)

    def dump(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()

    @classmethod
    def load(cls, path: Path) -> Journal:
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename that refuses to replace an existing file: a hard link fails on an existing name, atomically.

    File systems without hard links fall back to check-then-rename (names are unique per camera and time, so
    the window only matters if two writers shared a camera, which the catalogue's constraints already forbid).
    """
    try:
        os.link(src, dst)
    except FileExistsError:
        raise FileExistsError(f"refusing to overwrite {dst}") from None
    except OSError:
        if dst.exists():
            raise FileExistsError(f"refusing to overwrite {dst}") from None
        os.rename(src, dst)
        return
    os.unlink(src)


def _write_durably(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class SegmentWriter:
    """Muxes already-demuxed packets into one segment file. Not thread-safe: one per camera worker."""

    def __init__(
        self,
        volume: VolumeInfo,
        camera_id: str,
        start_us: int,
        clock_offset_us: int,
        streams: list[av.stream.Stream],
        codecs: str,
        extradata: dict[int, bytes] | None = None,
        container_format: str = "mp4",
        hash_alg: str = DEFAULT_HASH,
        encryption: tuple[str, MasterKey] | None = None,
        fence: tuple[str, int] | None = None,
    ) -> None:
        """``encryption`` is (cipher, master key) to encrypt at rest: a fresh data key, wrapped under the master key
        in the segment's sidecar, written and fsynced right after the journal and before the first media byte."""
        check_hash_alg(hash_alg)
        suffix = layout.SUFFIXES[container_format]
        attempt = 0
        while True:
            stem = layout.stem_for(camera_id, start_us, attempt)
            base = volume.path / str(stem)
            self.final = base.with_name(base.name + suffix)
            self.partial = base.with_name(base.name + suffix + layout.PARTIAL_SUFFIX)
            self.journal_path = base.with_name(base.name + layout.JOURNAL_SUFFIX)
            if not (self.final.exists() or self.partial.exists() or self.journal_path.exists()):
                break
            attempt += 1
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.volume = volume
        self.journal = Journal(
            camera_id=camera_id,
            volume_id=volume.id,
            start_us=start_us,
            clock_offset_us=clock_offset_us,
            codecs=codecs,
            rel_path=str(self.final.relative_to(volume.path)),
            hash_alg=hash_alg,
            encryption=encryption[0] if encryption else None,
            node_id=fence[0] if fence else None,
            lease_token=fence[1] if fence else None,
        )
        _write_durably(self.journal_path, self.journal.dump())
        self._file: HashingWriter | EncryptingWriter
        if encryption is None:
            fsync_dir(self.final.parent)
            self._file = HashingWriter(self.partial, hash_alg)
        else:
            cipher, master = encryption
            key = suites.new_key(cipher)
            name = segment_name(volume.id, self.journal.rel_path)
            write_sidecar(sidecar_path(self.final), cipher, name, [wrap(master, cipher, name, key)])
            self._file = EncryptingWriter(self.partial, cipher, key, hash_alg)
            del key
        self._out = av.open(
            self._file, "w", format=container_format, options={"movflags": MOVFLAGS, "flush_packets": "1"}
        )
        self._map: dict[int, av.stream.Stream] = {}
        for s in streams:
            o = self._out.add_stream_from_template(s)
            if s.codec_context.name == "hevc":
                # Apple players and browsers need hvc1 (parameter sets in the sample entry), not hev1.
                o.codec_tag = "hvc1"
            if extradata and s.index in extradata:
                o.codec_context.extradata = extradata[s.index]
            self._map[s.index] = o
        self.packets = 0

    def write(self, packet: av.Packet, source_index: int) -> None:
        packet.stream = self._map[source_index]
        self._out.mux_one(packet)
        if isinstance(self._file, EncryptingWriter):
            # The muxer writes a fragment (or the init section) whole within one call: one record each.
            self._file.seal()
        self.packets += 1

    @property
    def bytes_written(self) -> int:
        """Bytes on disk so far (the stored size: with encryption, record heads and tags included)."""
        f = self._file
        return f.stored_size if isinstance(f, EncryptingWriter) else f.size

    def finish(self) -> FinishedFile:
        """Close, fsync, rename into place, fsync the directory. The caller then inserts the row."""
        self._out.close()
        f = self._file
        plain_digest = None
        if isinstance(f, EncryptingWriter):
            f.finish()
            plain_digest = f.plain_hexdigest()
        f.fsync()
        f.close()
        rename_noreplace(self.partial, self.final)
        fsync_dir(self.final.parent)
        stored = f.stored_size if isinstance(f, EncryptingWriter) else f.size
        return FinishedFile(
            self.journal.rel_path, f.hexdigest(), stored, f.hash_alg, plain_digest, self.journal.encryption
        )

    def abort(self) -> None:
        """Stop writing after a failure. Leaves the partial file and journal for recovery to cut back."""
        try:
            self._out.close()
        except Exception as exc:  # the muxer may fail again on the same full disk; recovery handles the file
            log.debug("closing muxer after failure: %s", exc)
        try:
            if not self._file.closed:
                self._file.close()
        except OSError as exc:
            log.debug("closing file after failure: %s", exc)

    def remove_journal(self) -> None:
        self.journal_path.unlink(missing_ok=True)
