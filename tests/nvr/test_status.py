"""``nvr status`` from the catalogue alone: share recorded over the active part of the last 24 h, gaps, staleness."""

from sqlalchemy import select

from nvr import registry
from nvr.models import Gap, RecorderState, Segment, Volume
from nvr.status import STALE_US, all_status

H = 3_600_000_000
NOW = 1_800_000_000_000_000


def _camera(s, cam_id: str, activated_at: int) -> None:
    registry.add(
        s,
        cam_id,
        registry.CameraFields(name=cam_id, stream_url="rtsp://h/p", managing_unit="U"),
        actor="t",
        now_us=activated_at - 1,
    )
    registry.transition(s, cam_id, "active", actor="t", now_us=activated_at)


def _segment(s, cam: str, seq: int, start: int, end: int, vol: str) -> None:
    s.add(
        Segment(
            camera_id=cam,
            seq=seq,
            volume_id=vol,
            rel_path=f"{cam}/{seq}.mp4",
            start_us=start,
            end_us=end,
            media_duration_us=end - start,
            bytes=1,
            frames=1,
            codecs="h264",
            clock_offset_us=0,
            sha256="0" * 64,
            prev_link=f"{seq:064x}",
            link=f"{seq + 1:064x}",
            recovered=False,
            created_us=end,
            retain_until_us=end + 30 * 86_400_000_000,
        )
    )


def test_share_counts_only_the_active_part_of_the_day_and_the_open_segment(runtime) -> None:
    with runtime.db.session() as s:
        vol = s.scalar(select(Volume.id))
        _camera(s, "cam", NOW - 10 * H)
        _segment(s, "cam", 1, NOW - 10 * H, NOW - 6 * H, vol)
        _segment(s, "cam", 2, NOW - 6 * H, NOW - 5 * H, vol)
        s.add(Gap(camera_id="cam", start_us=NOW - 5 * H, end_us=NOW - 4 * H, reason="disconnected", detail=None))
        _segment(s, "cam", 3, NOW - 4 * H, NOW - 1 * H, vol)
        s.add(
            RecorderState(
                camera_id="cam", state="recording", reason=None, since_us=NOW - 4 * H, heartbeat_us=NOW - 1_000_000
            )
        )
    with runtime.db.session() as s:
        (st,) = all_status(s, NOW)
    assert st.state == "recording"
    # 9 h of 10 recorded: the one-hour gap is the only hole (the last hour is the segment being written).
    assert st.recorded_share_24h == 0.9
    assert [g.reason for g in st.gaps_24h] == ["disconnected"]
    assert st.segments_24h == 3

    with runtime.db.session() as s:
        s.get(RecorderState, "cam").heartbeat_us = NOW - STALE_US - 1
    with runtime.db.session() as s:
        (st,) = all_status(s, NOW)
    assert st.state == "offline" and "recorder not running" in st.reason
    assert st.recorded_share_24h == 0.8
