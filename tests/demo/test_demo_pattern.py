"""The encoded pattern is a valid, loopable H.264 stream with visibly changing frames, and the cache is reused."""

from __future__ import annotations

import time
from pathlib import Path

import av

from nvr.demo.pattern import NAL_IDR, NAL_PPS, NAL_SPS, Pattern, encode_pattern, split_annexb

# Must match the small_pattern fixture in conftest.py.
FPS, LOOP_SECONDS, WIDTH, HEIGHT = 25, 2, 320, 180


def _nal_types(au: tuple[bytes, ...]) -> list[int]:
    return [nal[0] & 0x1F for nal in au]


def test_pattern_is_whole_gops_with_headers_before_every_idr(small_pattern: Pattern) -> None:
    p = small_pattern
    assert (p.width, p.height, p.fps, p.gop) == (WIDTH, HEIGHT, FPS, FPS)
    assert p.frame_count == FPS * LOOP_SECONDS
    assert p.frame_count % p.gop == 0
    assert [i for i, key in enumerate(p.keyframes) if key] == list(range(0, p.frame_count, p.gop))
    for index, au in enumerate(p.access_units):
        types = _nal_types(au)
        if p.keyframes[index]:
            # SPS and PPS in-band and first, so a client can start decoding at any GOP.
            assert types[:2] == [NAL_SPS, NAL_PPS]
            assert NAL_IDR in types
        else:
            assert set(types) == {1}, f"frame {index}: only non-IDR slices expected, got {types}"
    assert p.access_units[0][0] == p.sps and p.access_units[0][1] == p.pps
    assert p.profile_level_id == p.sps[1:4].hex() and len(p.profile_level_id) == 6
    assert p.bitrate > 50_000


def test_pattern_decodes_to_distinct_frames_across_the_loop(small_pattern: Pattern) -> None:
    decoder = av.CodecContext.create("h264", "r")
    frames: list[av.VideoFrame] = []
    # Two passes over the loop: wrapping from the last frame to the first must decode cleanly too.
    for index in list(range(small_pattern.frame_count)) * 2:
        frames.extend(decoder.decode(av.Packet(small_pattern.annexb(index))))
    frames.extend(decoder.decode(None))
    assert len(frames) == 2 * small_pattern.frame_count
    assert all((f.width, f.height) == (WIDTH, HEIGHT) for f in frames)
    lumas = [bytes(f.planes[0]) for f in frames[: small_pattern.frame_count]]
    assert len(set(lumas)) == len(lumas), "every frame of the loop must look different"


def test_split_annexb_handles_3_and_4_byte_start_codes() -> None:
    stream = b"\x00\x00\x00\x01\x67\xaa\x00\x00\x01\x68\xbb\x00\x00\x00\x01\x65\xcc\xdd"
    assert split_annexb(stream) == [b"\x67\xaa", b"\x68\xbb", b"\x65\xcc\xdd"]


def test_cache_is_reused_and_a_corrupt_cache_is_replaced(tmp_path: Path) -> None:
    args = (64, 48, 10, 1, 1, 100_000)
    first = encode_pattern(*args, cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and not files[0].name.endswith(".tmp")

    started = time.monotonic()
    again = encode_pattern(*args, cache_dir=tmp_path)
    assert time.monotonic() - started < 0.5
    # The noise band is random per encode, so equal bytes prove the cached copy was used.
    assert again.access_units == first.access_units

    files[0].write_bytes(files[0].read_bytes()[:-10])
    rebuilt = encode_pattern(*args, cache_dir=tmp_path)
    assert rebuilt.frame_count == first.frame_count
    assert rebuilt.access_units != first.access_units
    assert encode_pattern(*args, cache_dir=tmp_path).access_units == rebuilt.access_units

    other = encode_pattern(64, 48, 10, 1, 1, 200_000, cache_dir=tmp_path)
    assert other.access_units != first.access_units
    assert len(list(tmp_path.iterdir())) == 2


def test_loop_is_rounded_up_to_whole_gops(tmp_path: Path) -> None:
    p = encode_pattern(64, 48, 10, gop_seconds=1, seconds=1.5, bitrate=100_000)
    assert p.frame_count == 20 and p.gop == 10
