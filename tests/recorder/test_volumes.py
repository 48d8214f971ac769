"""The recorder writes only into volumes that carry this database's identity."""

from __future__ import annotations

import json

from nvr.status import all_status
from storage import volumes as vol
from tests.support.recording import add_camera, segments, wait_for


def _state(rt, cam):
    with rt.db.session() as s:
        st = next(c for c in all_status(s, rt.clock.now_us()) if c.camera_id == cam)
        return st.state, st.reason


def test_refuses_a_volume_whose_identity_is_missing(runtime, demo_server, supervisor_factory) -> None:
    volume = runtime.settings.effective_volumes[0]
    (volume / vol.IDENTITY_FILE).unlink()  # as an unmounted disk leaves an empty mount point
    add_camera(runtime, "cam1", demo_server.url("cam1"))
    supervisor_factory()
    wait_for(lambda: _state(runtime, "cam1")[0] == "error", 15, "error state")
    _, reason = _state(runtime, "cam1")
    assert reason.startswith("volume_identity_missing")
    assert str(volume) in reason
    assert list(volume.iterdir()) == [], "nothing may be written into a folder without identity"
    assert segments(runtime, "cam1") == []


def test_refuses_a_volume_of_another_database(runtime, demo_server, supervisor_factory) -> None:
    volume = runtime.settings.effective_volumes[0]
    ident = json.loads((volume / vol.IDENTITY_FILE).read_text())
    ident["database_id"] = "00000000-0000-0000-0000-000000000000"
    (volume / vol.IDENTITY_FILE).write_text(json.dumps(ident))
    add_camera(runtime, "cam1", demo_server.url("cam1"))
    supervisor_factory()
    wait_for(lambda: _state(runtime, "cam1")[0] == "error", 15, "error state")
    assert _state(runtime, "cam1")[1].startswith("volume_identity_foreign")
    assert sorted(p.name for p in volume.iterdir()) == [vol.IDENTITY_FILE]


def test_recording_resumes_when_the_disk_comes_back(runtime, demo_server, supervisor_factory) -> None:
    volume = runtime.settings.effective_volumes[0]
    saved = (volume / vol.IDENTITY_FILE).read_bytes()
    (volume / vol.IDENTITY_FILE).unlink()
    add_camera(runtime, "cam1", demo_server.url("cam1"))
    supervisor_factory()
    wait_for(lambda: _state(runtime, "cam1")[0] == "error", 15, "error state")
    (volume / vol.IDENTITY_FILE).write_bytes(saved)  # the disk is mounted again
    wait_for(lambda: len(segments(runtime, "cam1")) >= 1, 30, "recording after the volume returns")


def test_init_refuses_a_non_empty_folder_and_a_foreign_identity(runtime, tmp_path) -> None:
    import pytest

    from nvr.errors import NvrError

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "something").write_text("x")
    with runtime.db.session() as s, pytest.raises(NvrError) as err:
        vol.init_volume(s, busy, runtime.db.database_id(), 1)
    assert err.value.code == "volume_not_empty"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / vol.IDENTITY_FILE).write_text(
        json.dumps({"format": vol.IDENTITY_FORMAT, "volume_id": "v", "database_id": "other"})
    )
    with runtime.db.session() as s, pytest.raises(NvrError) as err:
        vol.init_volume(s, foreign, runtime.db.database_id(), 1)
    assert err.value.code == "volume_identity_foreign"
