import itertools
from fractions import Fraction

from nvr.recorder.timestamps import StreamTimeline

TB = Fraction(1, 90000)
FRAME = 3600  # 25 fps at 90 kHz


def test_first_keyframe_without_timestamps_is_kept_and_placed_before_the_next() -> None:
    t = StreamTimeline(0, TB, FRAME, 2.0)
    first = t.fix(None, None, 0)
    second = t.fix(123_000, 123_000, 40_000)
    third = t.fix(126_600, 126_600, 80_000)
    assert first[:2] == (0, 0)
    assert second[1] == FRAME and third[1] == 2 * FRAME
    assert t.filled == 1


def test_camera_restart_continues_the_timeline_and_is_reported() -> None:
    t = StreamTimeline(0, TB, FRAME, 2.0)
    outs = [t.fix(900_000 + i * FRAME, 900_000 + i * FRAME, i * 40_000)[1] for i in range(5)]
    _pts, dts, jump = t.fix(0, 0, 5 * 40_000)  # timestamps restart from zero
    assert jump is not None and jump.jump_seconds < -2
    assert dts == outs[-1] + FRAME
    nxt = t.fix(FRAME, FRAME, 6 * 40_000)
    assert nxt[1] == dts + FRAME and nxt[2] is None


def test_forward_jump_beyond_elapsed_time_is_a_step_but_normal_progress_is_not() -> None:
    t = StreamTimeline(0, TB, FRAME, 2.0)
    t.fix(0, 0, 0)
    assert t.fix(FRAME, FRAME, 40_000)[2] is None
    _, dts, jump = t.fix(FRAME + 90_000 * 3600, FRAME + 90_000 * 3600, 80_000)
    assert jump is not None and jump.jump_seconds > 3000
    assert dts == 2 * FRAME


def test_b_frames_keep_pts_after_dts_and_dts_strictly_increases() -> None:
    t = StreamTimeline(0, TB, FRAME, 2.0)
    seq = [(7200, 0), (21600, 3600), (10800, 7200), (14400, 10800), (18000, 10800)]  # last dts duplicated
    out = [t.fix(p, d, i * 40_000) for i, (p, d) in enumerate(seq)]
    dts = [o[1] for o in out]
    assert all(b > a for a, b in itertools.pairwise(dts))
    assert all(o[0] >= o[1] for o in out)
