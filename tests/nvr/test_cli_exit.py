"""Exit codes scripts and container health checks rely on."""

from __future__ import annotations

import subprocess
import sys


def _nvr(env, *args):
    return subprocess.run([sys.executable, "-m", "nvr", *args], env=env, capture_output=True, text=True, timeout=120)


def test_health_exits_non_zero_when_an_active_camera_has_no_recorder(nvr_env) -> None:
    assert _nvr(nvr_env, "init").returncode == 0
    assert _nvr(nvr_env, "health").returncode == 0
    add = _nvr(nvr_env, "camera", "add", "gate", "--name", "Gate", "--url", "rtsp://10.0.0.9/s", "--unit", "U")
    assert add.returncode == 0, add.stderr
    assert _nvr(nvr_env, "camera", "activate", "gate").returncode == 0
    sick = _nvr(nvr_env, "health")
    assert sick.returncode == 1 and "recorder offline for gate" in sick.stderr


def test_a_misspelt_option_is_a_usage_error_not_a_traceback(nvr_env) -> None:
    out = _nvr(nvr_env, "status", "--bogus")
    assert out.returncode == 2
    assert "No such option: --bogus" in out.stderr and "Traceback" not in out.stderr
