"""Playback of footage encrypted at rest, through the real API: the server decrypts per segment after hashing the
stored bytes against the row, so a player gets the same fMP4 as from a plain archive (whole and by Range); a changed
stored byte is refused before any byte is sent; a missing master key is a 503 with a stable code and an alarm."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nvr.clock import iso
from storage import crypt
from tests.api.conftest import DAY_US, Api
from tests.support import footage
from tests.support.footage import CLIP_SECONDS
from tests.support.media import top_boxes

SEGMENTS = 3
SEG_US = CLIP_SECONDS * 1_000_000


@pytest.fixture
def archive(api: Api) -> tuple[Api, list[Path], dict[str, str]]:
    footage.add_camera(api.rt, "cam-a")
    start = api.clock.now_us() - DAY_US
    footage.add_segments(api.rt, "cam-a", start, SEGMENTS, first_variant=0, encrypt=True)
    files = [footage.segment_path(api.rt, "cam-a", seq) for seq in range(1, SEGMENTS + 1)]
    api.user("boss", ["approver"])
    api.user("olga", ["officer"])
    api.grant("boss", "olga", ["cam-a"])
    params = {"start": iso(start) or "", "end": iso(start + SEGMENTS * SEG_US) or "", "purpose": "integrity check"}
    return api, files, params


def _mdats(data: bytes) -> list[bytes]:
    return [data[a:b] for box, a, b in top_boxes(data) if box == b"mdat"]


def test_encrypted_footage_plays_back_as_the_original_fmp4_whole_and_by_range(archive) -> None:
    api, files, params = archive
    assert all(crypt.is_encrypted(f.read_bytes()) for f in files)
    originals = [footage.clip(variant=i).read_bytes() for i in range(SEGMENTS)]
    with api.client("olga") as c:
        r = c.get("/api/v1/cameras/cam-a/playback", params=params)
        assert r.status_code == 200, r.text
        assert r.headers["x-nvr-integrity"] == "verified-per-segment"
        assert _mdats(r.content) == [m for o in originals for m in _mdats(o)]
        whole = r.content
        n = len(whole)
        part = c.get("/api/v1/cameras/cam-a/playback", params=params, headers={"Range": f"bytes={n // 3}-{2 * n // 3}"})
    assert part.status_code == 206, part.text
    assert part.content == whole[n // 3 : 2 * n // 3 + 1]
    for f in files:  # nothing decrypted was left beside the ciphertext
        assert sorted(p.name for p in f.parent.iterdir() if p.name.startswith(f.name)) == [f.name, f.name + ".key"]


def test_a_changed_stored_byte_is_refused_before_any_byte(archive) -> None:
    api, files, params = archive
    data = bytearray(files[0].read_bytes())
    data[len(data) // 2] ^= 0x40
    files[0].write_bytes(bytes(data))
    with api.client("olga") as c:
        r = c.get("/api/v1/cameras/cam-a/playback", params=params)
    assert (r.status_code, r.json()["error"]["code"]) == (500, "segment_damaged"), r.text
    assert "seq 1 " in r.json()["error"]["message"]
    assert b"mdat" not in r.content


def test_a_missing_master_key_is_503_with_its_code_and_an_alarm(archive, tmp_path) -> None:
    api, _files, params = archive
    shutil.move(api.rt.settings.master_keys_dir, tmp_path / "away")
    with api.client("olga") as c:
        r = c.get("/api/v1/cameras/cam-a/playback", params=params)
        health = c.get("/api/v1/health").json()
    assert (r.status_code, r.json()["error"]["code"]) == (503, "master_key_missing"), r.text
    assert b"mdat" not in r.content
    assert "master_key_missing" in health["alarms"]
