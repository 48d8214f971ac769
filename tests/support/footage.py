"""A real archive without waiting for a camera: one short H.264 clip encoded by FFmpeg (through PyAV) into the
recorder's fragmented-MP4 layout, copied as consecutive segments and registered in the catalogue with their hashes
and chain links, exactly as the recorder registers what it writes."""

from __future__ import annotations

import functools
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path

import av
from sqlalchemy import select
from sqlalchemy.orm import Session

from integrity import keys, suites
from nvr import registry
from nvr.models import Segment, Volume
from nvr.runtime import Runtime
from storage import catalog, layout
from storage.crypt import EncryptingWriter
from storage.keyring import Keyring, ensure_master_key, wrap, write_sidecar
from storage.segment_io import segment_name, sidecar_path
from storage.writer import MOVFLAGS
from tests.support.media import top_boxes

CLIP_SECONDS = 2
FPS = 25


@functools.lru_cache(maxsize=64)
def clip(width: int = 160, height: int = 120, variant: int = 0) -> Path:
    """A 2 s clip, 25 fps, a keyframe every second, changing pixels; encoded once per test process. Each
    ``variant`` has a picture of its own (variant 0 is the default clip), for footage whose files all differ."""
    path = Path(tempfile.mkdtemp(prefix="nvr-clip-")) / f"clip-{width}x{height}-{variant}.mp4"
    with av.open(str(path), "w", format="mp4", options={"movflags": MOVFLAGS}) as out:
        st = out.add_stream("libx264", rate=FPS)
        st.width, st.height, st.pix_fmt = width, height, "yuv420p"
        st.codec_context.gop_size = FPS
        st.codec_context.options = {"x264-params": "keyint=25:min-keyint=25:scenecut=0", "preset": "ultrafast"}
        st.codec_context.time_base = Fraction(1, FPS)
        for i in range(CLIP_SECONDS * FPS):
            frame = av.VideoFrame(width, height, "yuv420p")
            for plane in frame.planes:
                plane.update(
                    bytes(((x * (variant + 1) + i * 4 + variant * 37) % 256) for x in range(plane.buffer_size))
                )
            frame.pts = i
            for pkt in st.encode(frame):
                out.mux(pkt)
        for pkt in st.encode(None):
            out.mux(pkt)
    return path


def add_camera(rt: Runtime, camera_id: str, unit: str = "Unit A", share_class: str = "authorized") -> None:
    with rt.db.session() as s:
        registry.add(
            s,
            camera_id,
            registry.CameraFields(
                name=f"Camera {camera_id}",
                stream_url=f"rtsp://admin:secret@10.0.0.1/{camera_id}",
                managing_unit=unit,
                share_class=share_class,
                address="1 Exact Street",
                latitude=31.2304,
                longitude=121.4737,
                installation_notes="pole 7, serial X123",
            ),
            actor="test",
            now_us=rt.clock.now_us(),
        )


def add_segments(
    rt: Runtime,
    camera_id: str,
    start_us: int,
    count: int,
    *,
    first_variant: int | None = None,
    encrypt: bool = False,
) -> list[int]:
    """``count`` touching 2 s segments from ``start_us``; returns their start times. With ``first_variant``, segment
    i is a copy of ``clip(variant=first_variant + i)``, so no two of its files are equal (a swap is a real change).
    Hashed with the active suite's algorithm, as the recorder hashes them. ``encrypt``: stored encrypted at rest
    as the recorder stores them (storage.writer: a sidecar with the data key wrapped by the active master key, one
    record per fragment), made on first use."""
    starts = []
    with rt.db.session() as s:
        vol = s.scalars(select(Volume)).first()
        assert vol is not None
        hash_alg = suites.get(keys.active_suite(s)).hash_alg
        for i in range(count):
            t = start_us + i * CLIP_SECONDS * 1_000_000
            rel = str(layout.stem_for(camera_id, t)) + ".mp4"
            dst = Path(vol.path) / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            src = clip() if first_variant is None else clip(variant=first_variant + i)
            size, digest = _file_facts(src, hash_alg)
            plain_digest = cipher = None
            if encrypt:
                cipher = next(x.cipher for x in suites.SUITES.values() if x.hash_alg == hash_alg)
                plain_digest = digest
                size, digest = _encrypt_copy(rt, s, src, dst, cipher, hash_alg, segment_name(vol.id, rel))
            else:
                shutil.copyfile(src, dst)
            catalog.register_segment(
                s,
                camera_id=camera_id,
                volume_id=vol.id,
                rel_path=rel,
                start_us=t,
                media_duration_us=CLIP_SECONDS * 1_000_000,
                size=size,
                frames=CLIP_SECONDS * FPS,
                codecs="h264",
                clock_offset_us=0,
                sha256=digest,
                hash_alg=hash_alg,
                plain_digest=plain_digest,
                encryption=cipher,
                recovered=False,
                now_us=rt.clock.now_us(),
                floor_days=rt.settings.retention_floor_days,
            )
            starts.append(t)
    return starts


def _encrypt_copy(
    rt: Runtime, s: Session, src: Path, dst: Path, cipher: str, hash_alg: str, name: str
) -> tuple[int, str]:
    """Copy ``src`` to ``dst`` encrypted, a record per top-level box run ending at each ``mdat`` (as the muxer's
    flushes fall: the init section, then one ``moof``+``mdat`` per fragment)."""
    master = ensure_master_key(s, Keyring(rt.settings.master_keys_dir), rt.clock.now_us())
    key = suites.new_key(cipher)
    write_sidecar(sidecar_path(dst), cipher, name, [wrap(master, cipher, name, key)])
    data = src.read_bytes()
    w = EncryptingWriter(dst, cipher, key, hash_alg)
    boxes = top_boxes(data)
    cut = 0
    for i, (box, _a, b) in enumerate(boxes):
        if box in (b"moov", b"mdat") or i == len(boxes) - 1:
            w.write(data[cut:b])
            w.seal()
            cut = b
    w.finish()
    w.fsync()
    w.close()
    return w.stored_size, w.hexdigest()


@functools.lru_cache(maxsize=64)
def _file_facts(path: Path, hash_alg: str = "sha256") -> tuple[int, str]:
    return path.stat().st_size, suites.digest(hash_alg, path.read_bytes())


def segment_path(rt: Runtime, camera_id: str, seq: int) -> Path:
    """The file of a camera's segment ``seq``, as the catalogue names it (volume path + relative path)."""
    with rt.db.session() as s:
        row = s.execute(
            select(Volume.path, Segment.rel_path)
            .join(Volume, Volume.id == Segment.volume_id)
            .where(Segment.camera_id == camera_id, Segment.seq == seq)
        ).one()
    return Path(row[0]) / row[1]
