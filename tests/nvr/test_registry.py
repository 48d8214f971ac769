import json
import subprocess
import sys

import pytest

from nvr import registry
from nvr.errors import NvrError
from nvr.registry import CameraFields

SECRET_URL = "rtsp://admin:S3cret-pw@10.1.2.3:554/Streaming/Channels/101?user=admin&password=S3cret-pw"


def fields(**kw: object) -> CameraFields:
    base: dict[str, object] = {"name": "Gate", "stream_url": "rtsp://cam.local/s1", "managing_unit": "Unit A"}
    base.update(kw)
    return CameraFields(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("camera_id", ["34020000001320000001", "gate-1", "north_gate"])
def test_accepts_gb28181_codes_and_slugs(db, camera_id: str) -> None:
    with db.session() as s:
        cam = registry.add(s, camera_id, fields(), actor="t", now_us=1)
    assert cam.id == camera_id
    assert cam.state == "registered"


@pytest.mark.parametrize("camera_id", ["../etc", "a/b", "Gate", "", "1234", "x" * 65, "cam 1", "3402000000132000000"])
def test_refuses_ids_that_are_neither(db, camera_id: str) -> None:
    with db.session() as s, pytest.raises(NvrError) as err:
        registry.add(s, camera_id, fields(), actor="t", now_us=1)
    assert err.value.code == "camera_id_invalid"


def test_bad_fields_have_their_own_codes(db) -> None:
    cases = [
        (fields(stream_url="http://x/y"), "stream_url_invalid"),
        (fields(latitude=91.0, longitude=0.0), "location_invalid"),
        (fields(latitude=10.0), "location_invalid"),
        (fields(share_class="public"), "share_class_invalid"),
        (fields(name="  "), "camera_name_invalid"),
    ]
    for f, code in cases:
        with db.session() as s, pytest.raises(NvrError) as err:
            registry.add(s, "cam", f, actor="t", now_us=1)
        assert err.value.code == code
    with db.session() as s:
        registry.add(s, "cam", fields(), actor="t", now_us=1)
    with db.session() as s, pytest.raises(NvrError) as err:
        registry.add(s, "cam", fields(), actor="t", now_us=2)
    assert err.value.code == "camera_exists"


def test_lifecycle_records_each_change_and_decommission_is_final(db) -> None:
    with db.session() as s:
        registry.add(s, "cam", fields(), actor="t", now_us=1)
        registry.transition(s, "cam", "active", actor="t", now_us=2)
        registry.transition(s, "cam", "suspended", actor="t", now_us=3, reason="maintenance")
        registry.transition(s, "cam", "active", actor="t", now_us=4)
        registry.transition(s, "cam", "decommissioned", actor="t", now_us=5)
    with db.session() as s:
        hist = [(h.from_state, h.to_state, h.at_us) for h in registry.history(s, "cam")]
        assert hist == [
            (None, "registered", 1),
            ("registered", "active", 2),
            ("active", "suspended", 3),
            ("suspended", "active", 4),
            ("active", "decommissioned", 5),
        ]
        assert registry.get(s, "cam").state_changed_us == 5
    with db.session() as s, pytest.raises(NvrError) as err:
        registry.transition(s, "cam", "active", actor="t", now_us=6)
    assert err.value.code == "camera_state_invalid"
    with db.session() as s, pytest.raises(NvrError) as err:
        registry.update(s, "cam", CameraFields(name="New"), now_us=6)
    assert err.value.code == "camera_decommissioned"


def test_redaction_removes_userinfo_and_secret_query_values() -> None:
    red = registry.redact_url(SECRET_URL)
    assert "S3cret-pw" not in red
    assert "admin" not in red
    assert red.startswith("rtsp://***@10.1.2.3:554/Streaming/Channels/101")
    text = registry.redact_text(f"error opening '{SECRET_URL}': 401 Unauthorized")
    assert "S3cret-pw" not in text
    assert text.endswith(": 401 Unauthorized")


def _nvr(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nvr", *args], env=env, capture_output=True, text=True, timeout=60)


def test_cli_never_prints_credentials(nvr_env: dict[str, str]) -> None:
    add = _nvr(
        nvr_env,
        "camera",
        "add",
        "34020000001320000001",
        "--name",
        "Gate",
        "--url",
        SECRET_URL,
        "--unit",
        "Unit A",
        "--address",
        "1 Main St",
        "--lat",
        "31.2",
        "--lon",
        "121.5",
        "--share-class",
        "non_shared",
        "--json",
    )
    assert add.returncode == 0, add.stderr
    outputs = [add]
    outputs.append(_nvr(nvr_env, "camera", "list", "--json"))
    outputs.append(_nvr(nvr_env, "camera", "show", "34020000001320000001"))
    outputs.append(_nvr(nvr_env, "camera", "show", "34020000001320000001", "--json"))
    outputs.append(_nvr(nvr_env, "camera", "activate", "34020000001320000001"))
    for r in outputs:
        assert r.returncode == 0, r.stderr
        assert "S3cret-pw" not in r.stdout + r.stderr
    shown = json.loads(outputs[3].stdout)
    assert shown["share_class"] == "non_shared"
    assert shown["latitude"] == 31.2
    assert [h["to"] for h in shown["history"]] == ["registered"]


def test_cli_errors_are_messages_with_nonzero_exit(nvr_env: dict[str, str]) -> None:
    r = _nvr(nvr_env, "camera", "show", "nope")
    assert r.returncode == 2
    assert r.stderr.startswith("error: camera_not_found:")
    r = _nvr(nvr_env, "camera", "add", "../x", "--name", "n", "--url", "rtsp://h/p", "--unit", "u")
    assert r.returncode == 2
    assert "camera_id_invalid" in r.stderr
