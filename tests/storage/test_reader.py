"""Playback assembly from real segment files: H.264 (and AAC) encoded by PyAV, cut into segments by the recorder's
own ``SegmentWriter``, spliced by ``storage.reader`` and checked by decoding the result with PyAV and ffprobe.

Every video frame carries its index as a 10-bit binary counter (16x16 blocks along the top edge), so a test can
tell exactly which frames were served: none lost, none repeated, the right first and last one.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import pairwise
from pathlib import Path

import av
import av.logging
import pytest

from nvr.errors import Kind, NvrError
from storage.fmp4 import scan
from storage.reader import GapInfo, PlaybackPlan, SegmentRef, iter_playback, plan_playback
from storage.volumes import VolumeInfo
from storage.writer import SegmentWriter
from tests.support.media import ffprobe, mux_tone, top_boxes

FPS = 25
GOP = 25  # one fragment per second
SEGMENT_FRAMES = 50  # two fragments per segment
SEGMENT_US = SEGMENT_FRAMES * 1_000_000 // FPS
FRAME_US = 1_000_000 // FPS
AUDIO_RATE = 48000
T0 = 1_700_000_000_000_000  # wall clock of the first segment
BITS = 10
_RAMP = bytes(range(256)) * 3


@dataclass(frozen=True)
class Recording:
    """Segment files cut from one continuous encode, in order, each ``SEGMENT_FRAMES`` frames long."""

    files: tuple[Path, ...]
    width: int
    height: int
    audio: bool

    def refs(self, start_us: int = T0, gaps: dict[int, int] | None = None, first_seq: int = 1) -> list[SegmentRef]:
        """Catalogue rows: touching 2 s segments; ``gaps`` maps a file index to an outage inserted before it."""
        out, t = [], start_us
        for i, path in enumerate(self.files):
            t += (gaps or {}).get(i, 0)
            out.append(SegmentRef(path, first_seq + i, t, t + SEGMENT_US, path.stat().st_size))
            t += SEGMENT_US
        return out


def _frame(i: int, width: int, height: int) -> av.VideoFrame:
    frame = av.VideoFrame(width, height, "yuv420p")
    y_plane, u_plane, v_plane = frame.planes
    luma = bytearray(y_plane.buffer_size)
    counter = b"".join((b"\xeb" if i >> bit & 1 else b"\x10") * 16 for bit in range(BITS)).ljust(width, b"\x80")
    for y in range(height):
        row = y * y_plane.line_size
        # The counter on top, a diagonal gradient moving with i below it (so P-frames carry real data).
        luma[row : row + width] = counter if y < 16 else _RAMP[(y + 3 * i) % 256 :][:width]
    y_plane.update(bytes(luma))
    for plane in (u_plane, v_plane):
        plane.update(b"\x80" * plane.buffer_size)
    frame.pts = i
    return frame


def _read_counter(frame: av.VideoFrame) -> int:
    plane = frame.planes[0]
    row = bytes(plane)[8 * plane.line_size :][: plane.width]
    return sum(1 << bit for bit in range(BITS) if row[16 * bit + 8] > 128)


def _encode(path: Path, frames: int, width: int, height: int, audio: bool) -> None:
    """A plain MP4, the "camera": fixed 1 s GOPs, no B-frames, optional AAC tone in step with the video."""
    with av.open(str(path), "w", format="mp4") as out:
        v = out.add_stream("libx264", rate=FPS)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        v.options = {"g": str(GOP), "keyint_min": str(GOP), "sc_threshold": "0", "bf": "0", "preset": "ultrafast"}
        a = out.add_stream("aac", rate=AUDIO_RATE, layout="mono") if audio else None
        audio_t = 0
        for i in range(frames):
            out.mux(v.encode(_frame(i, width, height)))
            if a is None:
                continue
            audio_t, _ = mux_tone(out, a, audio_t, (i + 1) * AUDIO_RATE // FPS, AUDIO_RATE)
        out.mux(v.encode())
        if a is not None:
            out.mux(a.encode())


def _record(root: Path, name: str, frames: int, width: int, height: int, audio: bool) -> Recording:
    """Encode, then cut into segments the way the recorder does: demuxed packets into ``SegmentWriter``."""
    source = root / f"{name}-source.mp4"
    _encode(source, frames, width, height, audio)
    volume = VolumeInfo(id=name, path=root / name)
    volume.path.mkdir()
    files: list[Path] = []
    writer: SegmentWriter | None = None
    in_segment = 0
    with av.open(str(source)) as inp:
        streams = list(inp.streams)
        for packet in inp.demux(streams):
            if packet.size == 0:
                continue
            is_video = packet.stream.type == "video"
            if is_video and packet.is_keyframe and (writer is None or in_segment == SEGMENT_FRAMES):
                if writer is not None:
                    files.append(volume.path / writer.finish().rel_path)
                    writer.remove_journal()
                start_us = T0 + len(files) * SEGMENT_US
                writer = SegmentWriter(volume, "cam", start_us, 0, streams, "h264,aac" if audio else "h264")
                in_segment = 0
            if writer is None:
                continue
            in_segment += is_video
            writer.write(packet, packet.stream.index)
    assert writer is not None
    files.append(volume.path / writer.finish().rel_path)
    writer.remove_journal()
    assert len(files) == frames // SEGMENT_FRAMES
    return Recording(tuple(files), width, height, audio)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Recording]:
    root = tmp_path_factory.mktemp("reader")
    return {
        "video": _record(root, "video", 250, 160, 96, audio=False),
        "av": _record(root, "av", 250, 160, 96, audio=True),
        "wide": _record(root, "wide", 50, 192, 112, audio=False),
    }


@pytest.fixture(params=["video", "av"])
def rec(request: pytest.FixtureRequest, recordings: dict[str, Recording]) -> Recording:
    return recordings[request.param]


# --- reading the result back -----------------------------------------------------------------------------------


@dataclass
class Played:
    counters: list[int] = field(default_factory=list)  # frame index drawn in each decoded frame, in order
    pts: list[int] = field(default_factory=list)
    keyframes: list[bool] = field(default_factory=list)
    sizes: set[tuple[int, int]] = field(default_factory=set)
    video_tb: Fraction = Fraction(0)
    audio: list[tuple[int, int]] = field(default_factory=list)  # (dts, duration) of each audio packet
    audio_tb: Fraction = Fraction(0)
    audio_samples: int = 0


def _assemble(plan: PlaybackPlan, path: Path, chunk_size: int = 1 << 20) -> bytes:
    data = b"".join(iter_playback(plan, chunk_size))
    assert len(data) == plan.total_bytes
    path.write_bytes(data)
    return data


def _play(path: Path) -> Played:
    """Decode every packet of every stream; FFmpeg errors raise and anything it logs as a warning fails the test."""
    out = Played()
    old = av.logging.get_level()
    av.logging.set_level(av.logging.WARNING)
    try:
        with av.logging.Capture(local=False) as logs, av.open(str(path)) as container:
            out.video_tb = container.streams.video[0].time_base
            if container.streams.audio:
                out.audio_tb = container.streams.audio[0].time_base
            for packet in container.demux():
                if packet.stream.type == "audio" and packet.dts is not None:
                    out.audio.append((packet.dts, packet.duration))
                for frame in packet.decode():
                    if isinstance(frame, av.AudioFrame):
                        out.audio_samples += frame.samples
                        continue
                    out.counters.append(_read_counter(frame))
                    out.pts.append(frame.pts)
                    out.keyframes.append(frame.key_frame)
                    out.sizes.add((frame.width, frame.height))
    finally:
        av.logging.set_level(old)
    assert not logs, logs
    return out


def _mdats(data: bytes) -> list[bytes]:
    return [data[start:end] for box_type, start, end in top_boxes(data) if box_type == b"mdat"]


def _source_mdats(rec: Recording) -> list[bytes]:
    """mdat payloads of all fragments of the recording, in order: fragment k holds frames [25k, 25k + 25)."""
    return [m for path in rec.files for m in _mdats(path.read_bytes())]


def _sha(chunks: list[bytes]) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def _check_stream(data: bytes, path: Path, plan: PlaybackPlan, frames: list[int], rec: Recording) -> Played:
    """What every assembled stream must satisfy; ``frames`` are the frame indexes it must show, in order."""
    boxes = [b[0] for b in top_boxes(data)]
    assert boxes[:2] == [b"ftyp", b"moov"]
    assert boxes.count(b"ftyp") == 1 and boxes.count(b"moov") == 1
    assert b"mfra" not in boxes  # the sources end with one; its offsets would be wrong here
    assert set(boxes[2:]) == {b"moof", b"mdat"}
    structure = scan(path)
    assert structure.tail == "clean" and structure.usable
    assert [f.sequence_number for f in structure.fragments] == list(range(1, len(frames) // GOP + 1))

    # Payloads travel untouched: the served mdats are exactly the covered GOPs of the source files.
    first_gop = frames[0] // GOP
    assert _sha(_mdats(data)) == _sha(_source_mdats(rec)[first_gop : first_gop + len(frames) // GOP])

    played = _play(path)
    assert played.counters == frames
    assert played.keyframes[0] and played.keyframes.count(True) == len(frames) // GOP
    step = int(Fraction(1, FPS) / played.video_tb)
    # Across segment boundaries and collapsed gaps alike: one frame duration between frames, never more or less.
    assert [b - a for a, b in pairwise(played.pts)] == [step] * (len(frames) - 1)
    assert played.pts[0] == 0
    assert plan.media_duration_us == len(frames) * FRAME_US
    assert played.sizes == {(rec.width, rec.height)}

    probe = ffprobe(path)
    video = next(s for s in probe["streams"] if s["codec_type"] == "video")
    assert int(video["nb_read_frames"]) == len(frames)
    assert float(probe["format"]["duration"]) == pytest.approx(plan.media_duration_us / 1e6, abs=0.05)

    if rec.audio:
        # Audio runs on without holes or overlaps, and ends with the picture (within one AAC frame or so).
        assert all(b[0] == a[0] + a[1] for a, b in pairwise(played.audio))
        audio_end = (played.audio[-1][0] + played.audio[-1][1]) * played.audio_tb
        assert float(audio_end) == pytest.approx(plan.media_duration_us / 1e6, abs=0.05)
        assert played.audio_samples > 0
    return played


# --- tests -----------------------------------------------------------------------------------------------------


def test_touching_segments_play_as_one_stream(rec: Recording, tmp_path: Path) -> None:
    refs = rec.refs()
    plan = plan_playback(refs, T0, T0 + 10 * SEGMENT_US)
    assert plan.segments == [1, 2, 3, 4, 5]
    assert plan.first_us == T0 and plan.end_us == refs[-1].end_us
    assert plan.gaps == [] and plan.truncated_at_us is None
    data = _assemble(plan, tmp_path / "out.mp4")
    # One init section, then every fragment of every file (moof sizes unchanged, trailing mfra dropped).
    init_size = scan(rec.files[0]).init_end
    assert plan.total_bytes == init_size + sum(f.end - f.offset for p in rec.files for f in scan(p).fragments)
    assert data[:init_size] == rec.files[0].read_bytes()[:init_size]
    _check_stream(data, tmp_path / "out.mp4", plan, list(range(250)), rec)


def test_window_starts_on_the_keyframe_at_or_before_start(rec: Recording, tmp_path: Path) -> None:
    # 3.3 s falls in the GOP of frames 75..99 (second fragment of the second segment): serving starts at 3.0 s.
    plan = plan_playback(rec.refs(), T0 + 3_300_000, T0 + 5_500_000)
    assert plan.first_us == T0 + 3_000_000
    assert plan.end_us == T0 + 6_000_000  # after the fragment holding the requested end
    assert plan.segments == [2, 3]
    played = _check_stream(_assemble(plan, tmp_path / "o.mp4"), tmp_path / "o.mp4", plan, list(range(75, 150)), rec)
    assert played.counters[0] == 75


def test_end_is_exclusive(rec: Recording, tmp_path: Path) -> None:
    refs = rec.refs()
    # 5.0 s is where the GOP of frame 125 starts, inside the third segment; 6.0 s is where the fourth segment starts.
    for end_us, frames, seqs in [
        (T0 + 5_000_000, range(50, 125), [2, 3]),
        (T0 + 5_000_001, range(50, 150), [2, 3]),  # one µs more needs that whole GOP
        (T0 + 6_000_000, range(50, 150), [2, 3]),
        (T0 + 6_000_001, range(50, 175), [2, 3, 4]),
    ]:
        plan = plan_playback(refs, T0 + 2_000_000, end_us)
        assert plan.segments == seqs
        assert plan.end_us == T0 + frames[-1] // GOP * 1_000_000 + 1_000_000
        out = tmp_path / f"{end_us}.mp4"
        _check_stream(_assemble(plan, out), out, plan, list(frames), rec)


def test_gap_is_collapsed_and_reported(rec: Recording, tmp_path: Path) -> None:
    # A 30 s camera outage between the second and the third segment, and a 0.5 ms jitter (still touching).
    refs = rec.refs(gaps={2: 30_000_000, 4: 500})
    plan = plan_playback(refs, T0 + 1_000_000, refs[-1].end_us)
    assert plan.gaps == [GapInfo(start_us=refs[1].end_us, end_us=refs[2].start_us, media_offset_us=3_000_000)]
    assert plan.first_us == T0 + 1_000_000 and plan.end_us == refs[-1].end_us
    assert plan.segments == [1, 2, 3, 4, 5]
    # Media time runs on through the hole: frame 100 follows frame 99 one frame duration later.
    _check_stream(_assemble(plan, tmp_path / "g.mp4"), tmp_path / "g.mp4", plan, list(range(25, 250)), rec)

    # A window that starts inside the outage starts with the first footage after it.
    later = plan_playback(refs, refs[1].end_us + 10_000_000, refs[3].end_us)
    assert later.first_us == refs[2].start_us and later.gaps == [] and later.segments == [3, 4]
    _check_stream(_assemble(later, tmp_path / "h.mp4"), tmp_path / "h.mp4", later, list(range(100, 200)), rec)


def test_changed_resolution_truncates_the_stream(recordings: dict[str, Recording], tmp_path: Path) -> None:
    normal, wide = recordings["video"], recordings["wide"]
    a = normal.refs()
    # The camera reconnected with a new resolution after the second segment, and back again after the third.
    refs = [*a[:2], SegmentRef(wide.files[0], 3, a[2].start_us, a[2].end_us, wide.files[0].stat().st_size)]
    refs.append(SegmentRef(normal.files[2], 4, a[3].start_us, a[3].end_us, normal.files[2].stat().st_size))
    plan = plan_playback(refs, T0 + 500_000, refs[-1].end_us)
    assert plan.segments == [1, 2] and plan.truncated_at_us == refs[2].start_us
    assert plan.end_us == refs[1].end_us
    _check_stream(_assemble(plan, tmp_path / "t.mp4"), tmp_path / "t.mp4", plan, list(range(100)), normal)

    # The client asks for the rest from where it was cut: the wide segment plays, and the next change cuts again.
    rest = plan_playback(refs, plan.truncated_at_us, refs[-1].end_us)
    assert rest.segments == [3] and rest.truncated_at_us == refs[3].start_us
    _check_stream(_assemble(rest, tmp_path / "w.mp4"), tmp_path / "w.mp4", rest, list(range(50)), wide)


def _copy(rec: Recording, dest: Path) -> Recording:
    dest.mkdir()
    files = []
    for i, path in enumerate(rec.files):
        files.append(dest / f"{i}.mp4")
        shutil.copyfile(path, files[-1])
    return Recording(tuple(files), rec.width, rec.height, rec.audio)


def _data_loss(exc: pytest.ExceptionInfo[NvrError], seq: int) -> None:
    assert exc.value.kind is Kind.DATA_LOSS and exc.value.code == "segment_damaged"
    assert f"seq {seq}" in exc.value.message


def test_damaged_segment_is_data_loss(recordings: dict[str, Recording], tmp_path: Path) -> None:
    rec = _copy(recordings["av"], tmp_path / "files")
    refs = rec.refs()
    window = (T0, refs[-1].end_us)

    with rec.files[2].open("ab") as f:  # one byte more than the catalogue recorded
        f.write(b"\0")
    with pytest.raises(NvrError) as exc:
        plan_playback(refs, *window)
    _data_loss(exc, 3)
    # Footage that does not need the damaged file still plays.
    assert plan_playback(refs, T0, refs[1].end_us).segments == [1, 2]

    rec.files[2].unlink()
    with pytest.raises(NvrError) as exc:
        plan_playback(refs, *window)
    _data_loss(exc, 3)
    assert "missing" in exc.value.message

    # Same size as recorded, but the bytes are not a fragmented MP4 any more (a moof header overwritten).
    data = bytearray(rec.files[3].read_bytes())
    moof_at = scan(rec.files[3]).fragments[1].offset
    data[moof_at + 4 : moof_at + 8] = b"junk"
    rec.files[3].write_bytes(bytes(data))
    with pytest.raises(NvrError) as exc:
        plan_playback(refs[3:], *window)
    _data_loss(exc, 4)


def _stream_until_error(plan: PlaybackPlan) -> tuple[int, NvrError]:
    received = 0
    with pytest.raises(NvrError) as exc:
        for chunk in iter_playback(plan, chunk_size=4096):
            received += len(chunk)
    return received, exc.value


def test_file_changed_after_planning_stops_the_stream(rec: Recording, tmp_path: Path) -> None:
    rec = _copy(rec, tmp_path / "files")
    refs = rec.refs()
    plan = plan_playback(refs, T0, refs[-1].end_us)
    original = rec.files[1].read_bytes()

    rec.files[1].write_bytes(original[:-10])  # cut short between planning and streaming
    received, error = _stream_until_error(plan)
    assert error.kind is Kind.DATA_LOSS and "seq 2" in error.message
    assert received < plan.total_bytes

    # Replaced by other footage of exactly the recorded size: the planned fragments are not there any more.
    other = rec.files[2].read_bytes()
    rec.files[1].write_bytes(other[: len(original)].ljust(len(original), b"\0"))
    received, error = _stream_until_error(plan)
    assert error.kind is Kind.DATA_LOSS and "seq 2" in error.message

    rec.files[1].write_bytes(original)
    assert b"".join(iter_playback(plan)) == b"".join(iter_playback(plan_playback(refs, T0, refs[-1].end_us)))


def test_chunking_is_exact_and_bounded(recordings: dict[str, Recording]) -> None:
    rec = recordings["av"]
    plan = plan_playback(rec.refs(), T0 + 1_500_000, T0 + 8_200_000)
    whole = b"".join(iter_playback(plan))
    assert len(whole) == plan.total_bytes
    for size in (1, 1000, 65536, plan.total_bytes + 1):
        chunks = list(iter_playback(plan, chunk_size=size))
        assert b"".join(chunks) == whole
        assert all(len(c) == size for c in chunks[:-1]) and 0 < len(chunks[-1]) <= size


def test_nothing_to_play(recordings: dict[str, Recording]) -> None:
    refs = recordings["video"].refs(gaps={3: 60_000_000})
    for start, end in [
        (T0 - 10_000_000, T0),  # before the first segment (its start is exclusive of the window end)
        (refs[2].end_us + 1_000_000, refs[3].start_us - 1_000_000),  # inside the outage
        (refs[-1].end_us, refs[-1].end_us + 5_000_000),  # after the last
    ]:
        with pytest.raises(NvrError) as exc:
            plan_playback(refs, start, end)
        assert exc.value.kind is Kind.NOT_FOUND and exc.value.code == "no_footage"
    with pytest.raises(NvrError) as exc:
        plan_playback(refs, T0 + 5_000_000, T0 + 5_000_000)
    assert exc.value.kind is Kind.INVALID_ARGUMENT
    with pytest.raises(NvrError) as exc:
        plan_playback([], T0, T0 + 1)
    assert exc.value.code == "no_footage"


# --- 32-bit tfdt ------------------------------------------------------------------------------------------------


def _patch_moofs(path: Path, *, tfdt_v0: bool = False, default_duration: tuple[int, int] | None = None) -> None:
    """Rewrite moof fields in place (sizes unchanged): tfdt as version 0 (32-bit value, padded), or the tfhd
    default_sample_duration of fragment ``default_duration[0]`` of a video-only file."""
    data = bytearray(path.read_bytes())
    moofs = [(start, end) for box_type, start, end in top_boxes(bytes(data)) if box_type == b"moof"]
    for n, (start, end) in enumerate(moofs):
        for box_type, t_start, t_end in top_boxes(bytes(data[start:end])):
            if box_type != b"traf":
                continue
            for child, c_start, _ in top_boxes(bytes(data[start + t_start : start + t_end])):
                at = start + t_start + c_start
                if child == b"tfdt" and tfdt_v0:
                    assert data[at] == 1
                    value = struct.unpack_from(">Q", data, at + 4)[0]
                    struct.pack_into(">B3xI4x", data, at, 0, value)
                elif child == b"tfhd" and default_duration is not None and n == default_duration[0]:
                    flags = struct.unpack_from(">I", data, at)[0] & 0xFFFFFF
                    assert flags == 0x020038  # default-base-is-moof + default duration, size, flags
                    struct.pack_into(">I", data, at + 8, default_duration[1])
    path.write_bytes(bytes(data))


def _tfdt_versions(data: bytes) -> set[int]:
    versions = set()
    for box_type, start, end in top_boxes(data):
        if box_type == b"moof":
            for t_type, t_start, t_end in top_boxes(data[start:end]):
                if t_type == b"traf":
                    sub = data[start + t_start : start + t_end]
                    versions |= {sub[c_start] for child, c_start, _ in top_boxes(sub) if child == b"tfdt"}
    return versions


def test_version0_tfdt_is_rewritten_as_32_bit(rec: Recording, tmp_path: Path) -> None:
    """Other muxers write 32-bit decode times; they are rewritten in their own width."""
    rec = _copy(rec, tmp_path / "files")
    for path in rec.files:
        _patch_moofs(path, tfdt_v0=True)
    refs = rec.refs(gaps={3: 5_000_000})
    plan = plan_playback(refs, T0, refs[-1].end_us)
    data = _assemble(plan, tmp_path / "v0.mp4")
    assert _tfdt_versions(data) == {0}
    _check_stream(data, tmp_path / "v0.mp4", plan, list(range(250)), rec)


def test_version0_tfdt_overflow_raises_instead_of_wrapping(recordings: dict[str, Recording], tmp_path: Path) -> None:
    rec = _copy(recordings["video"], tmp_path / "files")
    # The first segment's last GOP claims 25 samples of 0x0C000000 ticks: the next segment must start at
    # 12800 + 25 * 0x0C000000 (about 5e9), past what 32 bits can hold.
    _patch_moofs(rec.files[0], default_duration=(1, 0x0C00_0000))
    refs = rec.refs()[:2]
    wide_plan = plan_playback(refs, T0, refs[-1].end_us)  # 64-bit tfdt: fine
    second = next(p for p in wide_plan._parts if p.ref.seq == 2)
    assert second.deltas[1] == 12800 + 25 * 0x0C00_0000 > 0xFFFFFFFF
    _patch_moofs(rec.files[1], tfdt_v0=True)
    with pytest.raises(NvrError) as exc:
        plan_playback(refs, T0, refs[-1].end_us)
    assert exc.value.kind is Kind.FAILED_PRECONDITION and exc.value.code == "tfdt_overflow"
    assert "seq 2" in exc.value.message
