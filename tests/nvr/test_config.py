import subprocess
import sys
from pathlib import Path

import pytest

from nvr.config import load_settings
from nvr.errors import NvrError


def test_unknown_environment_key_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NVR_SEGMENT_SECONS", "5")
    with pytest.raises(NvrError) as err:
        load_settings()
    assert err.value.code == "config_invalid"
    assert "NVR_SEGMENT_SECONS" in err.value.message


def test_unknown_and_invalid_file_keys_are_named(tmp_path: Path) -> None:
    cfg = tmp_path / "nvr.toml"
    cfg.write_text("segment_seconds = 0.5\nretention_dayz = 3\n")
    with pytest.raises(NvrError) as err:
        load_settings(cfg)
    assert "retention_dayz" in err.value.message
    assert "segment_seconds" in err.value.message


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "nvr.toml"
    cfg.write_text(f'segment_seconds = 30\ndata_dir = "{tmp_path}"\n')
    monkeypatch.setenv("NVR_SEGMENT_SECONDS", "10")
    s = load_settings(cfg)
    assert s.segment_seconds == 10
    assert s.data_dir == tmp_path
    assert s.effective_database_url == f"sqlite:///{tmp_path / 'nvr.db'}"
    assert s.effective_volumes == [tmp_path / "volumes" / "default"]


def test_cli_refuses_to_start_with_a_bad_setting(nvr_env: dict[str, str]) -> None:
    env = dict(nvr_env, NVR_RECONNECT_MAX_SECONDS="not-a-number")
    r = subprocess.run([sys.executable, "-m", "nvr", "status"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "reconnect_max_seconds" in r.stderr
    assert "Traceback" not in r.stderr
