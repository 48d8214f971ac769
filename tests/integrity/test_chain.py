from integrity import chain


def _rows(camera_id: str, n: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    prev = chain.genesis(camera_id)
    for i in range(1, n + 1):
        r: dict[str, object] = {
            "camera_id": camera_id,
            "seq": i,
            "start_us": i * 10,
            "end_us": i * 10 + 10,
            "media_duration_us": 10,
            "bytes": 100 + i,
            "frames": 25,
            "codecs": "h264",
            "clock_offset_us": 0,
            "sha256": f"{i:064x}",
            "prev_link": prev,
        }
        r["link"] = chain.link(prev, r)
        prev = str(r["link"])
        rows.append(r)
    return rows


def test_intact_chain_verifies() -> None:
    assert chain.verify_rows("cam", _rows("cam", 5)) == []


def test_edit_removal_and_reorder_are_named() -> None:
    rows = _rows("cam", 5)
    rows[2]["end_us"] = 999
    assert [(p.seq, p.kind) for p in chain.verify_rows("cam", rows)] == [(3, "chain_break")]
    rows = _rows("cam", 5)
    del rows[1]
    kinds = {(p.seq, p.kind) for p in chain.verify_rows("cam", rows)}
    assert (3, "seq_gap") in kinds and (3, "chain_break") in kinds
    rows = _rows("cam", 4)
    rows[1], rows[2] = rows[2], rows[1]
    assert chain.verify_rows("cam", rows)


def test_chain_of_one_camera_does_not_verify_as_another() -> None:
    assert chain.verify_rows("other", _rows("cam", 2))


def _tombstone(rows: list[dict[str, object]], first: int, last: int) -> dict[str, object]:
    """What the sweeper leaves for rows ``first..last`` (1-based seq) after deleting them."""
    return {
        "first_seq": first,
        "last_seq": last,
        "prev_link": rows[first - 1]["prev_link"],
        "last_link": rows[last - 1]["link"],
    }


def test_chain_verifies_across_tombstones_at_the_start_in_the_middle_and_at_the_end() -> None:
    rows = _rows("cam", 10)
    kept = [r for r in rows if int(r["seq"]) in (4, 5, 8)]  # type: ignore[call-overload]
    tombs = [_tombstone(rows, 1, 3), _tombstone(rows, 6, 7), _tombstone(rows, 9, 10)]
    assert chain.verify_with_tombstones("cam", kept, tombs) == []
    assert chain.verify_with_tombstones("cam", [], [_tombstone(rows, 1, 10)]) == []
    assert chain.verify_with_tombstones("cam", rows, []) == []


def test_rows_missing_without_a_tombstone_and_tombstones_that_do_not_join_are_named() -> None:
    rows = _rows("cam", 6)
    # Rows 1..2 gone with no tombstone: nothing is trusted, the first row is a gap and a break.
    assert {(p.seq, p.kind) for p in chain.verify_with_tombstones("cam", rows[2:], [])} == {
        (3, "seq_gap"),
        (3, "chain_break"),
    }
    # A tombstone for 1..2, but row 4 removed as well.
    problems = chain.verify_with_tombstones("cam", rows[2:3] + rows[4:], [_tombstone(rows, 1, 2)])
    assert {(p.seq, p.kind) for p in problems} == {(5, "seq_gap"), (5, "chain_break")}
    # A forged tombstone (its prev_link does not continue the chain) is named, and so is the row after it when its
    # last_link does not lead there.
    forged = {**_tombstone(rows, 3, 4), "prev_link": "00" * 32}
    problems = chain.verify_with_tombstones("cam", rows[:2] + rows[4:], [forged])
    assert [(p.seq, p.kind) for p in problems] == [(3, "chain_break")] and "tombstone seq 3..4" in problems[0].detail
    bad_end = {**_tombstone(rows, 3, 4), "last_link": "11" * 32}
    problems = chain.verify_with_tombstones("cam", rows[:2] + rows[4:], [bad_end])
    assert [(p.seq, p.kind) for p in problems] == [(5, "chain_break")] and "tombstone seq 3..4" in problems[0].detail
    # An edited row between tombstones is still caught.
    rows[3]["bytes"] = 1
    problems = chain.verify_with_tombstones("cam", rows[3:4], [_tombstone(rows, 1, 3), _tombstone(rows, 5, 6)])
    assert [(p.seq, p.kind) for p in problems] == [(4, "chain_break")]
