"""Benchmarks keep a quick mode that the suite runs, so a benchmark cannot silently break. Each run asserts its own
result (bench/verify.py --quick: a clean verify of its catalogue and the detection of one altered row)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_verify_quick(tmp_path: Path) -> None:
    args = [sys.executable, str(ROOT / "bench" / "verify.py"), "--quick", "--data-dir", str(tmp_path / "bench")]
    pg = os.environ.get("TEST_DATABASE_URL")
    if pg:
        args += ["--db", "postgresql", "--pg-admin-url", pg, "--pg-database", f"nvr_bq_{os.getpid()}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NVR_")}
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
