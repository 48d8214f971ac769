"""The package as ``pip install .`` builds it (not the editable checkout) carries its migrations and works."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_built_wheel_installs_and_runs(tmp_path: Path, nvr_env: dict[str, str]) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("nvr_archive-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("nvr/migrations/versions/0001") for n in names)
    assert "nvr/migrations/env.py" in names
    assert any(n.endswith("entry_points.txt") for n in names)
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    # Run from a folder outside the checkout, with the installed copy first on the path.
    env = dict(nvr_env, PYTHONPATH=str(target))

    def run(*a):
        return subprocess.run(
            [sys.executable, "-m", "nvr", *a],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )

    where = subprocess.run(
        [sys.executable, "-c", "import nvr; print(nvr.__file__)"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(target)), where
    init = run("init")
    assert init.returncode == 0, init.stderr
    assert (Path(env["NVR_DATA_DIR"]) / "volumes" / "default" / ".nvr-volume.json").is_file()
    add = run("camera", "add", "gate", "--name", "Gate", "--url", "rtsp://u:p@h/s", "--unit", "U", "--activate")
    assert add.returncode == 0, add.stderr
    assert "gate active" in add.stdout
    listed = run("camera", "list", "--json")
    assert listed.returncode == 0 and '"gate"' in listed.stdout
    assert "u:p@" not in listed.stdout
