"""The export's convenience MP4: a plain, faststart MP4 of exactly one window, stream-copied from real segments.

The archive is ``tests.support.footage``: 2 s segments registered as the recorder registers them, each a copy of
one clip of 50 frames at 25 fps with a keyframe every second, so archive frame ``k`` is clip packet ``k % 50``
and is on screen from ``T0 + k * 40 ms``. Every file is read back independently: top-level boxes by hand, packets
by PyAV, decoding by PyAV (anything FFmpeg logs fails the test) and by the system's ffprobe.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path

import av
import av.logging
import pytest

from api.footage import segments_in
from nvr.errors import Kind, NvrError
from nvr.runtime import Runtime
from storage import remux
from storage.reader import SegmentRef
from storage.remux import ConvenienceFile, convenience_mp4
from storage.writer import MOVFLAGS
from tests.support.footage import CLIP_SECONDS, FPS, add_camera, add_segments, clip
from tests.support.media import ffprobe, mux_tone, top_boxes

T0 = 1_700_000_000_000_000
FRAME_US = 1_000_000 // FPS
SEGMENT_US = CLIP_SECONDS * 1_000_000
CLIP_FRAMES = CLIP_SECONDS * FPS
ONE_FRAME_S = 1 / FPS


def _refs(rt: Runtime, camera_id: str = "cam1") -> list[SegmentRef]:
    with rt.db.session() as s:
        rows = segments_in(s, camera_id, 0, 2**62)
    return [SegmentRef(Path(vp) / rp, seq, a, b, n) for seq, a, b, n, vp, rp in rows]


@pytest.fixture
def archive(runtime: Runtime) -> list[SegmentRef]:
    """Five touching segments: 10 s of footage, frames 0..249."""
    add_camera(runtime, "cam1")
    add_segments(runtime, "cam1", T0, 5)
    return _refs(runtime)


# --- reading files back ----------------------------------------------------------------------------------------


def _child(data: bytes, path: list[bytes]) -> list[bytes]:
    """Payloads of the boxes at ``path`` (e.g. moov/trak/edts/elst), every match."""
    found = [data]
    for name in path:
        found = [d[a:b] for d in found for t, a, b in top_boxes(d) if t == name]
    return found


def _edit_media_times(data: bytes) -> list[int]:
    """media_time of every elst entry of every track."""
    times = []
    for elst in _child(data, [b"moov", b"trak", b"edts", b"elst"]):
        version, count = elst[0], struct.unpack_from(">I", elst, 4)[0]
        entry, pos = (20, 8) if version == 1 else (12, 8)
        for i in range(count):
            at = pos + i * entry
            times.append(struct.unpack_from(">q" if version == 1 else ">i", elst, at + (8 if version == 1 else 4))[0])
    return times


@dataclass
class Played:
    shown_pts: list[float] = field(default_factory=list)  # seconds, each video frame FFmpeg presents
    video_packets: list[bytes] = field(default_factory=list)  # in decode order, lead-in included
    audio_packets: list[bytes] = field(default_factory=list)
    audio_end_s: float = 0.0
    audio_samples: int = 0


def _play(path: Path) -> Played:
    out = Played()
    old = av.logging.get_level()
    av.logging.set_level(av.logging.WARNING)
    try:
        with av.logging.Capture(local=False) as logs, av.open(str(path)) as container:
            for packet in container.demux():
                if packet.size and packet.stream.type == "audio":
                    out.audio_packets.append(bytes(packet))
                    out.audio_end_s = float((packet.pts + packet.duration) * packet.time_base)
                elif packet.size:
                    out.video_packets.append(bytes(packet))
                for frame in packet.decode():  # the empty packet at the end flushes the decoder
                    if isinstance(frame, av.AudioFrame):
                        out.audio_samples += frame.samples
                    else:
                        out.shown_pts.append(float(frame.pts * frame.time_base))
    finally:
        av.logging.set_level(old)
    assert not logs, logs
    return out


def _clip_packets(path: Path, kind: str = "video") -> list[tuple[bytes, bool]]:
    with av.open(str(path)) as c:
        return [(bytes(p), p.is_keyframe) for p in c.demux() if p.size and p.stream.type == kind]


def _frames_shown(start_us: int, end_us: int, total: int) -> list[int]:
    """Archive frames presented in [start_us, end_us): on screen from their own time on."""
    return [k for k in range(total) if start_us <= T0 + k * FRAME_US < end_us]


def _check_file(f: ConvenienceFile, start_us: int, end_us: int, total_frames: int = 250) -> Played:
    """What every convenience file must satisfy, for a window inside continuous footage."""
    data = f.path.read_bytes()
    assert f.bytes == len(data) and f.sha256 == hashlib.sha256(data).hexdigest()
    assert (f.first_us, f.end_us) == (start_us, end_us)
    boxes = [b[0] for b in top_boxes(data)]
    # A plain MP4 any player opens at once: one moov, before the media, no fragments.
    assert boxes[0] == b"ftyp" and boxes.count(b"moov") == 1 and boxes.index(b"moov") < boxes.index(b"mdat")
    assert b"moof" not in boxes and b"mfra" not in boxes

    played = _play(f.path)
    shown = _frames_shown(start_us, end_us, total_frames)
    assert len(played.shown_pts) == len(shown)
    assert played.shown_pts[0] == 0  # the window's first frame is at the start of the timeline
    assert all(b - a == pytest.approx(ONE_FRAME_S) for a, b in zip(played.shown_pts, played.shown_pts[1:]))
    window_s = (end_us - start_us) / 1e6
    probe = ffprobe(f.path)
    assert float(probe["format"]["duration"]) == pytest.approx(window_s, abs=ONE_FRAME_S)
    video = next(s for s in probe["streams"] if s["codec_type"] == "video")
    assert int(video["nb_read_frames"]) == len(shown)

    # Stream copy: the file holds the source packets byte for byte, from the keyframe at or before the start.
    source = _clip_packets(clip())
    on_screen_at_start = (start_us - T0) // FRAME_US
    lead = max(k for k in range(on_screen_at_start + 1) if source[k % CLIP_FRAMES][1])
    assert played.video_packets == [source[k % CLIP_FRAMES][0] for k in range(lead, shown[-1] + 1)]
    return played


# --- tests -----------------------------------------------------------------------------------------------------


def test_window_inside_one_segment(archive: list[SegmentRef], tmp_path: Path) -> None:
    start, end = T0 + 2_000_000 + 1_000_000, T0 + 2_000_000 + 1_800_000  # keyframe-aligned start, mid-GOP end
    files = convenience_mp4(archive, start, end, tmp_path / "out", "window")
    assert [f.path.name for f in files] == ["window.mp4"]
    _check_file(files[0], start, end)
    with pytest.raises(NvrError) as exc:  # never replaced
        convenience_mp4(archive, start, end, tmp_path / "out", "window")
    assert exc.value.code == "export_file_exists"
    assert files[0].sha256 == hashlib.sha256(files[0].path.read_bytes()).hexdigest()
    assert _edit_media_times(files[0].path.read_bytes()) in ([], [0])  # starts on a keyframe: nothing to skip


def test_window_across_segments(archive: list[SegmentRef], tmp_path: Path) -> None:
    start, end = T0 + 1_000_000, T0 + 9_000_000  # touches all five segments
    (f,) = convenience_mp4(archive, start, end, tmp_path, "across")
    played = _check_file(f, start, end)
    assert len(played.shown_pts) == 8 * FPS


def test_start_between_keyframes_uses_an_edit_list(archive: list[SegmentRef], tmp_path: Path) -> None:
    # 2.3 s: 0.3 s after the keyframe at 2.0 s and between two frames (2.28 s and 2.32 s).
    for start, end in [(T0 + 2_320_000, T0 + 5_520_000), (T0 + 2_300_000, T0 + 5_500_000)]:
        (f,) = convenience_mp4(archive, start, end, tmp_path / str(start), "cut")
        played = _check_file(f, start, end)
        # The GOP's lead-in is in the file but not shown: the edit list starts the timeline at the window start.
        assert len(played.video_packets) > len(played.shown_pts)
        media_times = [t for t in _edit_media_times(f.path.read_bytes()) if t > 0]
        assert len(media_times) == 1


def test_end_is_clipped_exclusively(archive: list[SegmentRef], tmp_path: Path) -> None:
    start = T0 + 1_000_000
    for end in [T0 + 3_000_000, T0 + 3_000_001, T0 + 4_000_000, T0 + 4_020_000, T0 + 4_040_000]:
        (f,) = convenience_mp4(archive, start, end, tmp_path / str(end), "end")
        _check_file(f, start, end)


def test_an_index_too_big_for_its_reserved_room_falls_back_to_faststart(
    archive: list[SegmentRef], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The moov is written into room reserved at the front; should it not fit, the file is made once more with
    FFmpeg's faststart, and is just as valid (moov before mdat, the same frames)."""

    def free_room(f: ConvenienceFile) -> int:
        return sum(end - body for kind, body, end in top_boxes(f.path.read_bytes()) if kind == b"free")

    start, end = T0 + 2_300_000, T0 + 7_700_000
    (roomy,) = convenience_mp4(archive, start, end, tmp_path, "roomy")
    assert free_room(roomy) > 60_000  # the usual case: the unused part of the reserved room
    monkeypatch.setattr(remux, "MOOV_RESERVE_BASE", 100)
    monkeypatch.setattr(remux, "MOOV_RESERVE_PER_SECOND", 0)
    (f,) = convenience_mp4(archive, start, end, tmp_path, "tight")
    _check_file(f, start, end)
    assert free_room(f) <= 8  # no reserved room: faststart made it (its free box is an 8-byte placeholder)


def test_payloads_are_not_re_encoded(archive: list[SegmentRef], tmp_path: Path) -> None:
    (f,) = convenience_mp4(archive, T0, archive[-1].end_us, tmp_path, "all")
    played = _check_file(f, T0, archive[-1].end_us)
    source = [data for data, _ in _clip_packets(clip())]
    assert played.video_packets == source * len(archive)


def test_gap_is_collapsed(runtime: Runtime, tmp_path: Path) -> None:
    add_camera(runtime, "cam1")
    add_segments(runtime, "cam1", T0, 2)  # 0..4 s
    add_segments(runtime, "cam1", T0 + 30_000_000, 2)  # 30..34 s after an outage
    refs = _refs(runtime)
    (f,) = convenience_mp4(refs, T0 + 1_000_000, T0 + 31_500_000, tmp_path / "a", "gap")
    assert (f.first_us, f.end_us) == (T0 + 1_000_000, T0 + 31_500_000)
    played = _play(f.path)
    # Both sides, the hole left out: 1.0 s to 4.0 s, then 30.0 s up to 31.5 s.
    assert len(played.shown_pts) == len(range(0, 3_000_000, FRAME_US)) + len(range(0, 1_500_000, FRAME_US))
    # A window ending inside the outage ends with the footage before it.
    (g,) = convenience_mp4(refs, T0 + 1_000_000, T0 + 20_000_000, tmp_path / "b", "gap")
    assert g.end_us == T0 + 4_000_000
    assert len(_play(g.path).shown_pts) == 3 * FPS


def test_incompatible_init_starts_a_new_file(archive: list[SegmentRef], tmp_path: Path) -> None:
    # The camera came back at another resolution for the fourth segment: its init section differs.
    wide = tmp_path / "wide.mp4"
    shutil.copyfile(clip(192, 112), wide)
    refs = [*archive[:3], SegmentRef(wide, archive[3].seq, archive[3].start_us, archive[3].end_us, wide.stat().st_size)]
    start, end = T0 + 1_000_000, archive[3].end_us
    files = convenience_mp4(refs, start, end, tmp_path / "out", "cam1")
    assert [f.path.name for f in files] == ["cam1.mp4", "cam1-part2.mp4"]
    assert (files[0].first_us, files[0].end_us) == (start, archive[3].start_us)
    assert (files[1].first_us, files[1].end_us) == (archive[3].start_us, end)
    assert len(_play(files[0].path).shown_pts) == 5 * FPS
    second = _play(files[1].path)
    assert len(second.shown_pts) == CLIP_FRAMES and second.shown_pts[0] == 0
    assert second.video_packets == [data for data, _ in _clip_packets(clip(192, 112))]
    with av.open(str(files[1].path)) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (192, 112)


def test_cancel_leaves_no_file(archive: list[SegmentRef], tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(NvrError) as exc:
        convenience_mp4(archive, T0, archive[-1].end_us, out, "c", cancelled=lambda: True)
    assert exc.value.kind is Kind.FAILED_PRECONDITION and exc.value.code == "export_cancelled"
    assert list(out.iterdir()) == []

    # Cancelled while the muxer is writing (the second check comes a few hundred packets in).
    calls = []

    def later() -> bool:
        calls.append(1)
        return len(calls) >= 2

    more = [*archive, *_shifted(archive, 5)]  # 500 frames
    with pytest.raises(NvrError) as exc:
        convenience_mp4(more, T0, more[-1].end_us, out, "c", cancelled=later)
    assert exc.value.code == "export_cancelled" and len(calls) == 2
    assert list(out.iterdir()) == []


def test_cancel_in_a_later_part_removes_the_earlier_ones(archive: list[SegmentRef], tmp_path: Path) -> None:
    wide = tmp_path / "wide.mp4"
    shutil.copyfile(clip(192, 112), wide)
    refs = [*archive[:4], SegmentRef(wide, 5, archive[4].start_us, archive[4].end_us, wide.stat().st_size)]
    seen: list[Path] = []
    out = tmp_path / "out"

    def when_part_one_exists() -> bool:
        seen.extend(out.glob("*.mp4"))
        return (out / "p.mp4").exists()

    with pytest.raises(NvrError) as exc:
        convenience_mp4(refs, T0, archive[-1].end_us, out, "p", cancelled=when_part_one_exists)
    assert exc.value.code == "export_cancelled" and out / "p.mp4" in seen
    assert list(out.iterdir()) == []


def _shifted(refs: list[SegmentRef], n: int) -> list[SegmentRef]:
    span = refs[-1].end_us - refs[0].start_us
    return [SegmentRef(r.path, r.seq + n, r.start_us + span, r.end_us + span, r.bytes) for r in refs]


def test_no_footage(archive: list[SegmentRef], tmp_path: Path) -> None:
    out = tmp_path / "out"
    for refs, start, end in [
        (archive, T0 - 10_000_000, T0),
        (archive, archive[-1].end_us, archive[-1].end_us + 1_000_000),
        ([], T0, T0 + 1_000_000),
    ]:
        with pytest.raises(NvrError) as exc:
            convenience_mp4(refs, start, end, out, "none")
        assert exc.value.kind is Kind.NOT_FOUND and exc.value.code == "no_footage"
    assert list(out.iterdir()) == []
    with pytest.raises(NvrError) as exc:
        convenience_mp4(archive, T0 + 1, T0 + 1, out, "none")
    assert exc.value.kind is Kind.INVALID_ARGUMENT


def test_damaged_segment_leaves_no_file(archive: list[SegmentRef], tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.mp4"
    shutil.copyfile(archive[2].path, damaged)
    refs = [*archive[:2], SegmentRef(damaged, 3, archive[2].start_us, archive[2].end_us, archive[2].bytes)]
    damaged.write_bytes(damaged.read_bytes()[:-100] + b"\0" * 100)  # same size, a torn tail: not the recording
    with pytest.raises(NvrError) as exc:
        convenience_mp4(refs, T0, refs[-1].end_us, tmp_path / "out", "d")
    assert exc.value.kind is Kind.DATA_LOSS
    assert list((tmp_path / "out").iterdir()) == []


def test_file_damaged_while_remuxing_leaves_no_file(tmp_path: Path) -> None:
    """A file that changes after planning stops the remux with the reader's error, and the partial output goes."""
    src = clip()
    files = [tmp_path / f"{i}.mp4" for i in range(30)]  # 60 s, some MB: read in several chunks
    for path in files:
        shutil.copyfile(src, path)
    size = src.stat().st_size
    refs = [SegmentRef(p, i + 1, T0 + i * SEGMENT_US, T0 + (i + 1) * SEGMENT_US, size) for i, p in enumerate(files)]
    out = tmp_path / "out"
    partials: list[Path] = []

    def damage_once_writing() -> bool:
        partials.extend(out.glob("*.partial"))
        if partials:
            files[-1].write_bytes(src.read_bytes()[:-10])  # cut short after planning
        return False

    with pytest.raises(NvrError) as exc:
        convenience_mp4(refs, T0, refs[-1].end_us, out, "d", cancelled=damage_once_writing)
    assert exc.value.kind is Kind.DATA_LOSS and exc.value.code == "segment_damaged" and "seq 30" in exc.value.message
    assert partials and list(out.iterdir()) == []


# --- with audio ------------------------------------------------------------------------------------------------

AUDIO_RATE = 48000


def _av_clip(path: Path) -> None:
    """Like ``footage.clip`` with an AAC track, in the recorder's fragmented layout."""
    with av.open(str(path), "w", format="mp4", options={"movflags": MOVFLAGS}) as out:
        v = out.add_stream("libx264", rate=FPS)
        v.width, v.height, v.pix_fmt = 160, 120, "yuv420p"
        v.options = {"g": str(FPS), "keyint_min": str(FPS), "sc_threshold": "0", "bf": "0", "preset": "ultrafast"}
        a = out.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        audio_t = 0
        for i in range(CLIP_FRAMES):
            frame = av.VideoFrame(160, 120, "yuv420p")
            for plane in frame.planes:
                plane.update(bytes(((x + i * 4) % 256) for x in range(plane.buffer_size)))
            frame.pts = i
            out.mux(v.encode(frame))
            audio_t, _ = mux_tone(out, a, audio_t, (i + 1) * AUDIO_RATE // FPS, AUDIO_RATE)
        out.mux(v.encode())
        out.mux(a.encode())


def test_audio_is_kept(tmp_path: Path) -> None:
    src = tmp_path / "av.mp4"
    _av_clip(src)
    refs = [
        SegmentRef(src, i + 1, T0 + i * SEGMENT_US, T0 + (i + 1) * SEGMENT_US, src.stat().st_size) for i in range(3)
    ]
    start, end = T0 + 1_300_000, T0 + 5_000_000
    (f,) = convenience_mp4(refs, start, end, tmp_path / "out", "av")
    played = _play(f.path)
    assert played.shown_pts[0] == 0 and len(played.shown_pts) == len(_frames_shown(start, end, 3 * CLIP_FRAMES))
    assert played.audio_samples > 0
    assert played.audio_end_s == pytest.approx((end - start) / 1e6, abs=0.05)  # about one AAC frame
    probe = ffprobe(f.path)
    assert {s["codec_type"] for s in probe["streams"]} == {"video", "audio"}
    assert float(probe["format"]["duration"]) == pytest.approx((end - start) / 1e6, abs=0.05)
    # Audio packets are copied too: every one of the file's is one of the source's, in order.
    source_audio = [data for data, _ in _clip_packets(src, "audio")]
    assert played.audio_packets and all(p in source_audio for p in played.audio_packets)


def test_b_frames_start_at_zero_and_end_cleanly(tmp_path: Path) -> None:
    """With B-frames the splice's picture starts a few frames after its decode time; the window still starts at
    0, and a reference frame past the end that an earlier frame needs is kept rather than breaking decoding."""
    src = tmp_path / "b.mp4"
    with av.open(str(src), "w", format="mp4", options={"movflags": MOVFLAGS}) as out:
        v = out.add_stream("libx264", rate=FPS)
        v.width, v.height, v.pix_fmt = 160, 120, "yuv420p"
        v.options = {"g": str(FPS), "keyint_min": str(FPS), "sc_threshold": "0", "bf": "2", "b_strategy": "0"}
        for i in range(CLIP_FRAMES):
            frame = av.VideoFrame(160, 120, "yuv420p")
            for plane in frame.planes:
                plane.update(bytes(((x * (i % 7 + 1) + i * 4) % 256) for x in range(plane.buffer_size)))
            frame.pts = i
            out.mux(v.encode(frame))
        out.mux(v.encode())
    with av.open(str(src)) as c:
        assert any(p.pts != p.dts for p in c.demux() if p.size)  # really has B-frames
    size = src.stat().st_size
    refs = [SegmentRef(src, i + 1, T0 + i * SEGMENT_US, T0 + (i + 1) * SEGMENT_US, size) for i in range(3)]
    for start, end in [(T0 + 1_000_000, T0 + 5_010_000), (T0 + 2_300_000, T0 + 3_130_000)]:
        (f,) = convenience_mp4(refs, start, end, tmp_path / str(end), "b")
        played = _play(f.path)
        assert played.shown_pts[0] == 0 and len(played.shown_pts) == len(_frames_shown(start, end, 3 * CLIP_FRAMES))
        assert all(b - a == pytest.approx(ONE_FRAME_S) for a, b in zip(played.shown_pts, played.shown_pts[1:]))
        duration = float(ffprobe(f.path)["format"]["duration"])
        assert duration == pytest.approx((end - start) / 1e6, abs=ONE_FRAME_S + 0.001)
