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
