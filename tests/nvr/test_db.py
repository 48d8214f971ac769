"""Several commands starting at once on a new database: one migrates, the others find it done."""

from __future__ import annotations

import subprocess
import sys


def test_concurrent_first_starts_do_not_collide(nvr_env: dict[str, str]) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "nvr", "status", "--json"],
            env=nvr_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [(*p.communicate(timeout=120), p.returncode) for p in procs]
    for out, err, code in results:
        assert code == 0, err
        assert '"cameras": []' in out
    ids = subprocess.run([sys.executable, "-m", "nvr", "init"], env=nvr_env, capture_output=True, text=True, timeout=60)
    assert ids.returncode == 0, ids.stderr
    assert "database id" in ids.stdout
