"""Scanning and crash recovery of fragmented MP4 segments, on real files written by PyAV with the recorder's flags.

A crash is simulated by keeping only a prefix of a cleanly written file: the muxer writes strictly sequentially, so
every torn file is a prefix of some clean one (plus, after a power loss, possibly zero-filled blocks).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import struct
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import av
import av.logging
import pytest

from storage.fmp4 import Fmp4Error, Scan, scan, truncate_to_complete
from tests.support.media import mux_tone

MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof"
WIDTH, HEIGHT, FPS, GOP, FRAMES = 160, 90, 25, 10, 75  # 3 s, 8 fragments (7 full GOPs + 5 frames)
AUDIO_RATE = 48000


@dataclass(frozen=True)
class Sample:
    path: Path
    video_frames: int
    audio_frames: int | None  # encoded AAC frames, None without audio


def _video_frame(i: int) -> av.VideoFrame:
    frame = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
    for k, plane in enumerate(frame.planes):
        buf = bytearray(plane.buffer_size)
        for y in range(plane.height):
            row = y * plane.line_size
            # A diagonal gradient moving with i: cheap, and different per frame so P-frames carry data.
            buf[row : row + plane.width] = bytes((x + y + 3 * i + 50 * k) & 0xFF for x in range(plane.width))
        plane.update(bytes(buf))
    frame.pts = i
    return frame


def _write(path: Path, with_audio: bool) -> Sample:
    video_packets = audio_packets = 0
    with av.open(str(path), "w", format="mp4", options={"movflags": MOVFLAGS}) as out:
        v = out.add_stream("libx264", rate=FPS)
        v.width, v.height, v.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        # Fixed GOP and no B-frames: one fragment per GOP and one decoded frame per packet.
        v.options = {"g": str(GOP), "keyint_min": str(GOP), "sc_threshold": "0", "bf": "0", "preset": "ultrafast"}
        a = out.add_stream("aac", rate=AUDIO_RATE, layout="mono") if with_audio else None
        audio_t = 0
        for i in range(FRAMES):
            for packet in v.encode(_video_frame(i)):
                out.mux(packet)
                video_packets += 1
            if a is not None:
                # Keep audio roughly in step with video so fragments interleave both tracks.
                audio_t, muxed = mux_tone(out, a, audio_t, (i + 1) * AUDIO_RATE // FPS, AUDIO_RATE)
                audio_packets += muxed
        for packet in v.encode():
            out.mux(packet)
            video_packets += 1
        if a is not None:
            for packet in a.encode():
                out.mux(packet)
                audio_packets += 1
    return Sample(path, video_packets, audio_packets if with_audio else None)


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Sample]:
    d = tmp_path_factory.mktemp("fmp4")
    return {"video": _write(d / "video.mp4", False), "av": _write(d / "av.mp4", True)}


@pytest.fixture(params=["video", "av"])
def sample(request: pytest.FixtureRequest, samples: dict[str, Sample]) -> Sample:
    return samples[request.param]


def _video_track(s: Scan) -> int:
    return next(t for t, handler in s.tracks.items() if handler == "vide")


def _decode_video(path: Path) -> int:
    """Decode every video packet; FFmpeg errors raise, and warnings/errors it only logs fail the test too."""
    old = av.logging.get_level()
    av.logging.set_level(av.logging.WARNING)
    try:
        with av.logging.Capture(local=False) as logs, av.open(str(path)) as container:
            # demux() ends with an empty packet, which flushes the decoder.
            n = sum(len(packet.decode()) for packet in container.demux(video=0))
    finally:
        av.logging.set_level(old)
    assert not logs, logs
    return n


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _box_offsets(data: bytes) -> list[tuple[bytes, int, int]]:
    """Top-level (type, offset, size) of a known-good file, independently of the module under test."""
    out, pos = [], 0
    while pos < len(data):
        size, box_type = struct.unpack_from(">I4s", data, pos)
        out.append((box_type, pos, size))
        pos += size
    return out


# --- clean files -----------------------------------------------------------------------------------------------


def test_scan_clean_file(sample: Sample) -> None:
    s = scan(sample.path)
    data = sample.path.read_bytes()
    boxes = _box_offsets(data)
    assert [b[0] for b in boxes[:2]] == [b"ftyp", b"moov"]
    assert s.init_end == boxes[1][1] + boxes[1][2]
    assert s.tail == "clean" and s.tail_reason is None
    assert s.file_size == len(data)
    assert s.usable
    assert s.has_mfra == (boxes[-1][0] == b"mfra")
    assert len(s.fragments) == math.ceil(FRAMES / GOP)
    assert s.complete_end == s.fragments[-1].end

    video = _video_track(s)
    assert sum(f.sample_counts[video] for f in s.fragments) == sample.video_frames == FRAMES
    assert all(f.sample_counts[video] == GOP for f in s.fragments[:-1])
    if sample.audio_frames is not None:
        audio = next(t for t, h in s.tracks.items() if h == "soun")
        assert set(s.tracks.values()) == {"vide", "soun"}
        assert sum(f.sample_counts[audio] for f in s.fragments) == sample.audio_frames
    else:
        assert list(s.tracks.values()) == ["vide"]

    # Fragments tile the file after the init section, in order, with rising decode times.
    assert s.fragments[0].offset == s.init_end
    for prev, nxt in zip(s.fragments, s.fragments[1:], strict=False):
        assert nxt.offset == prev.end
        assert nxt.sequence_number == prev.sequence_number + 1
        for track, t in prev.base_decode_times.items():
            assert nxt.base_decode_times[track] > t
    assert s.fragments[0].base_decode_times[video] == 0


def test_scan_accepts_file_object(sample: Sample) -> None:
    assert scan(io.BytesIO(sample.path.read_bytes())) == scan(sample.path)


def test_clean_file_left_byte_identical(sample: Sample, tmp_path: Path) -> None:
    path = tmp_path / "clean.mp4"
    path.write_bytes(sample.path.read_bytes())
    before, mtime = _sha256(path), path.stat().st_mtime_ns
    result = truncate_to_complete(path)
    assert result.action == "untouched" and result.usable
    assert result.original_size == result.new_size == path.stat().st_size
    assert result.fragments_kept == math.ceil(FRAMES / GOP)
    assert result.frames_kept[_video_track(scan(path))] == FRAMES
    assert _sha256(path) == before
    assert path.stat().st_mtime_ns == mtime


def test_clean_file_without_mfra_is_untouched(sample: Sample, tmp_path: Path) -> None:
    """Killed exactly between two fragments: nothing to cut, nothing to change."""
    s = scan(sample.path)
    path = tmp_path / "boundary.mp4"
    path.write_bytes(sample.path.read_bytes()[: s.fragments[4].end])
    before = _sha256(path)
    result = truncate_to_complete(path)
    assert result.action == "untouched" and result.fragments_kept == 5
    assert _sha256(path) == before
    assert _decode_video(path) == 5 * GOP


# --- torn files ------------------------------------------------------------------------------------------------


def _cut_points(s: Scan, data: bytes, where: str) -> list[int]:
    boxes = _box_offsets(data)
    moofs = [(o, n) for t, o, n in boxes if t == b"moof"]
    mdats = [(o, n) for t, o, n in boxes if t == b"mdat"]
    if where == "fragment_boundary":
        return [f.end for f in s.fragments] + [s.init_end or 0]
    if where == "inside_moof":
        return [o + n // 2 for o, n in moofs] + [o + n - 1 for o, n in moofs] + [o + 8 for o, _ in moofs]
    if where == "inside_mdat":
        return [o + n // 2 for o, n in mdats] + [o + n - 1 for o, n in mdats] + [o + 8 for o, _ in mdats]
    if where == "inside_header":
        return [o + k for t, o, _ in boxes for k in (1, 4, 7) if o + k < len(data)]
    if where == "inside_init":
        assert s.init_end is not None
        return [*range(0, s.init_end, 97), s.init_end - 1]
    if where == "inside_mfra":
        mfra = [(o, n) for t, o, n in boxes if t == b"mfra"]
        return [o + k for o, n in mfra for k in (1, 8, n // 2, n - 1)]
    raise AssertionError(where)


@pytest.mark.parametrize(
    "where", ["fragment_boundary", "inside_moof", "inside_mdat", "inside_header", "inside_init", "inside_mfra"]
)
def test_truncation_recovers_every_complete_fragment(sample: Sample, tmp_path: Path, where: str) -> None:
    data = sample.path.read_bytes()
    full = scan(sample.path)
    video = _video_track(full)
    cuts = _cut_points(full, data, where)
    assert cuts
    for cut in cuts:
        path = tmp_path / f"cut_{cut}.mp4"
        path.write_bytes(data[:cut])
        expected = [f for f in full.fragments if f.end <= cut]
        started = [f for f in full.fragments if f.offset < cut]

        result = truncate_to_complete(path)

        msg = f"cut at {cut}: {result}"
        assert result.original_size == cut, msg
        assert result.fragments_kept == len(expected), msg
        # Recovery loses at most the fragment that was being written when the "crash" happened.
        assert len(started) - len(expected) <= 1, msg
        if not expected:
            assert result.action == "unusable" and not result.usable, msg
            assert path.stat().st_size == cut, "an unusable file is left for the caller to delete"
            continue
        assert result.usable, msg
        assert result.new_size == expected[-1].end == path.stat().st_size, msg
        assert result.action == ("untouched" if cut == expected[-1].end else "truncated"), msg
        assert result.frames_kept[video] == sum(f.sample_counts[video] for f in expected), msg

        after = scan(path)
        assert after.tail == "clean" and after.fragments == expected, msg
        assert _decode_video(path) == result.frames_kept[video], msg
        path.unlink()


def test_truncated_file_is_a_prefix_of_the_original(sample: Sample, tmp_path: Path) -> None:
    data = sample.path.read_bytes()
    full = scan(sample.path)
    cut = full.fragments[3].offset + 500  # inside the 4th fragment's mdat
    path = tmp_path / "torn.mp4"
    path.write_bytes(data[:cut])
    result = truncate_to_complete(path)
    assert result.action == "truncated" and result.fragments_kept == 3
    assert result.reason and "mdat" in result.reason
    assert path.read_bytes() == data[: full.fragments[2].end]
    assert truncate_to_complete(path).action == "untouched"  # idempotent


def test_zero_filled_tail_after_power_loss(sample: Sample, tmp_path: Path) -> None:
    """File size committed but the last blocks never written: the tail reads as zeros."""
    data = sample.path.read_bytes()
    full = scan(sample.path)
    keep = full.fragments[5].end
    for tail_start in (keep, keep + 100):  # zeros at a box boundary, and inside the next fragment's moof
        path = tmp_path / f"zeros_{tail_start}.mp4"
        path.write_bytes(data[:tail_start] + b"\0" * 20000)
        s = scan(path)
        assert s.tail == "torn" and len(s.fragments) == 6
        result = truncate_to_complete(path)
        assert result.action == "truncated" and result.new_size == keep
        assert _decode_video(path) == 6 * GOP


def test_garbage_tail_after_complete_fragments_is_torn(sample: Sample, tmp_path: Path) -> None:
    """Stale blocks exposed after a crash: arbitrary bytes, including an impossible box header."""
    data = sample.path.read_bytes()
    full = scan(sample.path)
    path = tmp_path / "garbage_tail.mp4"
    path.write_bytes(data[: full.fragments[1].end] + struct.pack(">I4s", 3, b"moof") + bytes(range(256)) * 10)
    result = truncate_to_complete(path)
    assert result.action == "truncated" and result.fragments_kept == 2
    assert "invalid box size" in (result.reason or "")


def test_complete_mfra_followed_by_garbage_is_dropped(sample: Sample, tmp_path: Path) -> None:
    data = sample.path.read_bytes()
    full = scan(sample.path)
    if not full.has_mfra:
        pytest.skip("muxer wrote no mfra")
    path = tmp_path / "mfra_plus.mp4"
    path.write_bytes(data + b"\0" * 100)
    result = truncate_to_complete(path)
    assert result.action == "truncated" and result.new_size == full.complete_end < len(data)
    assert not scan(path).has_mfra


# --- nothing usable --------------------------------------------------------------------------------------------


def test_empty_file_is_unusable(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    s = scan(path)
    assert s.init_end is None and not s.fragments and s.complete_end == 0 and s.tail == "clean"
    result = truncate_to_complete(path)
    assert result.action == "unusable" and result.new_size == 0 and result.frames_kept == {}


def test_init_only_is_unusable(sample: Sample, tmp_path: Path) -> None:
    full = scan(sample.path)
    path = tmp_path / "init_only.mp4"
    path.write_bytes(sample.path.read_bytes()[: full.init_end])
    s = scan(path)
    assert s.init_end == full.init_end and s.tail == "clean" and not s.usable
    result = truncate_to_complete(path)
    assert result.action == "unusable" and "no complete fragment" in (result.reason or "")
    assert path.stat().st_size == full.init_end


def test_moof_without_mdat_is_unusable(sample: Sample, tmp_path: Path) -> None:
    data = sample.path.read_bytes()
    full = scan(sample.path)
    first = full.fragments[0].offset
    moof_end = first + struct.unpack_from(">I", data, first)[0]
    path = tmp_path / "moof_only.mp4"
    path.write_bytes(data[:moof_end])
    result = truncate_to_complete(path)
    assert result.action == "unusable" and "not followed by its mdat" in (result.reason or "")
    assert path.read_bytes() == data[:moof_end]


@pytest.mark.parametrize("content", [b"\0\0\0\x1cft", b"\0\0\0\x1cftypisom", b"\0\0"])
def test_torn_ftyp_is_unusable(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "torn_ftyp.mp4"
    path.write_bytes(content)
    result = truncate_to_complete(path)
    assert result.action == "unusable"
    assert path.read_bytes() == content


def test_all_zero_file_is_unusable(tmp_path: Path) -> None:
    path = tmp_path / "zeros.mp4"
    path.write_bytes(b"\0" * 4096)
    result = truncate_to_complete(path)
    assert result.action == "unusable" and "zero-filled" in (result.reason or "")


def test_mdat_with_size_zero_is_incomplete(sample: Sample, tmp_path: Path) -> None:
    data = bytearray(sample.path.read_bytes())
    full = scan(sample.path)
    last = full.fragments[-1]
    mdat_at = last.offset + struct.unpack_from(">I", data, last.offset)[0]
    struct.pack_into(">I", data, mdat_at, 0)
    path = tmp_path / "mdat0.mp4"
    path.write_bytes(bytes(data[: last.end]))
    result = truncate_to_complete(path)
    assert result.action == "truncated" and result.fragments_kept == len(full.fragments) - 1
    assert "size 0" in (result.reason or "")


# --- not ours / corrupt: raise, never cut ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"this is not an mp4 file at all, just text" * 10,
        struct.pack(">I4s", 4, b"ftyp") + b"\0" * 100,  # size below the 8-byte header
        struct.pack(">I4s", 16, b"\xff\xfe\x00\x01") + b"\0" * 100,  # type is not a four-character code
        bytes(range(256)) * 4,
        b"hello",  # too short for a box header, but already not the start of an ftyp
    ],
)
def test_garbage_raises_and_is_not_modified(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.bin"
    path.write_bytes(content)
    with pytest.raises(Fmp4Error):
        truncate_to_complete(path)
    assert path.read_bytes() == content


def test_non_fragmented_mp4_raises(tmp_path: Path) -> None:
    """A regular MP4 (moov with sample tables, one mdat) must not be mistaken for a torn fMP4 and deleted."""
    path = tmp_path / "plain.mp4"
    with av.open(str(path), "w", format="mp4") as out:
        v = out.add_stream("libx264", rate=FPS)
        v.width, v.height, v.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for i in range(5):
            for packet in v.encode(_video_frame(i)):
                out.mux(packet)
        for packet in v.encode():
            out.mux(packet)
    before = _sha256(path)
    with pytest.raises(Fmp4Error):
        truncate_to_complete(path)
    assert _sha256(path) == before


def test_corrupt_complete_moof_raises(sample: Sample, tmp_path: Path) -> None:
    """A fragment whose boxes are all present but whose moof is nonsense is corruption, not a crash."""
    data = bytearray(sample.path.read_bytes())
    full = scan(sample.path)
    frag = full.fragments[2]
    trun = data.find(b"trun", frag.offset, frag.end)
    struct.pack_into(">I", data, trun + 8, 0xFFFF)  # sample_count no longer matches the trun's size
    path = tmp_path / "bad_moof.mp4"
    path.write_bytes(bytes(data))
    with pytest.raises(Fmp4Error, match="trun"):
        scan(path)


def test_moof_pointing_outside_its_mdat_raises(sample: Sample, tmp_path: Path) -> None:
    data = bytearray(sample.path.read_bytes())
    full = scan(sample.path)
    frag = full.fragments[1]
    trun = data.find(b"trun", frag.offset, frag.end)
    (flags,) = struct.unpack_from(">I", data, trun + 4)
    assert flags & 1, "ffmpeg writes a data_offset"
    struct.pack_into(">i", data, trun + 12, 8)  # sample data "inside the moof"
    path = tmp_path / "bad_offset.mp4"
    path.write_bytes(bytes(data))
    with pytest.raises(Fmp4Error, match="outside its mdat"):
        scan(path)


def test_box_order_violation_raises(sample: Sample, tmp_path: Path) -> None:
    data = sample.path.read_bytes()
    full = scan(sample.path)
    first = full.fragments[0]
    moof_size = struct.unpack_from(">I", data, first.offset)[0]
    # Drop the first moof: its mdat now follows the init section directly.
    path = tmp_path / "orphan_mdat.mp4"
    path.write_bytes(data[: first.offset] + data[first.offset + moof_size :])
    with pytest.raises(Fmp4Error, match="not preceded by a moof"):
        scan(path)


def test_large_mdat_is_seeked_over_not_read(tmp_path: Path, sample: Sample) -> None:
    """A 3 GiB (sparse) mdat is handled from its header alone: the scan is instant and allocates nothing big."""
    data = sample.path.read_bytes()
    first = scan(sample.path).fragments[0]
    moof = data[first.offset : first.offset + struct.unpack_from(">I", data, first.offset)[0]]
    mdat_size = 3 << 30
    path = tmp_path / "huge.mp4"
    # Second fragment: the first moof again (its data offsets are relative to the moof, so still inside the
    # mdat), with a huge mdat whose payload is a hole in a sparse file.
    path.write_bytes(data[: first.end] + moof + struct.pack(">I4s", mdat_size, b"mdat"))
    total = first.end + len(moof) + mdat_size
    os.truncate(path, total)
    tracemalloc.start()
    try:
        s = scan(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert s.tail == "clean" and len(s.fragments) == 2 and s.complete_end == total
    assert peak < 1 << 20

    # The same box cut short, with a 64-bit size: torn, and the first fragment is kept.
    os.truncate(path, first.end + len(moof) + 4096)
    with path.open("r+b") as f:
        f.seek(first.end + len(moof))
        f.write(struct.pack(">I4sQ", 1, b"mdat", 1 << 40))
    s = scan(path)
    assert s.tail == "torn" and "needs" in (s.tail_reason or "") and len(s.fragments) == 1
