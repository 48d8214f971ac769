"""A segment whose row could not be written (database away) is registered before any later one, in order."""

from __future__ import annotations

from integrity import chain
from storage import catalog
from storage.catalog import linked_fields
from tests.support.recording import add_camera, decode_all, segments, sha256, wait_for


def test_failed_registration_is_retried_before_later_segments(
    runtime, demo_server, supervisor_factory, monkeypatch
) -> None:
    real = catalog.register_segment
    failures = {"left": 2}

    def flaky(session, **kw):
        if failures["left"] > 0 and not kw["recovered"] and kw["frames"] > 0:
            failures["left"] -= 1
            raise ConnectionError("database went away")
        return real(session, **kw)

    monkeypatch.setattr(catalog, "register_segment", flaky)
    add_camera(runtime, "cam1", demo_server.url("cam1"))
    sup = supervisor_factory()
    wait_for(lambda: len(segments(runtime, "cam1")) >= 4, 40, "recording to go on after the failures")
    sup.stop()
    rows = segments(runtime, "cam1")
    assert failures["left"] == 0
    starts = [seg.start_us for seg, _ in rows]
    assert starts == sorted(starts), "chain order must be footage order"
    assert (
        chain.verify_rows("cam1", [dict(linked_fields(s), prev_link=s.prev_link, link=s.link) for s, _ in rows]) == []
    )
    for seg, path in rows:
        assert sha256(path) == seg.sha256
        assert decode_all(path)[0] == seg.frames
    volume = runtime.settings.effective_volumes[0]
    assert not [p for p in volume.rglob("*.json") if p.name != ".nvr-volume.json"]
