"""Benchmarks keep a quick mode that the suite runs, so a benchmark cannot silently break. Each run asserts its own
result (bench/verify.py --quick: a clean verify of its catalogue and the detection of one altered row; bench/access.py
--quick: the rules raise an alert and suspend the grant)."""

from __future__ import annotations

import json
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


def test_bench_access_quick(tmp_path: Path) -> None:
    """bench/access.py --quick: grant check + audit write with and without the abnormal-use rules, every phase
    measured, and its own check that the rules raise an alert and suspend the grant (it exits non-zero if not)."""
    out_dir = tmp_path / "bench"
    args = [sys.executable, str(ROOT / "bench" / "access.py"), "--quick", "--data-dir", str(out_dir)]
    pg = os.environ.get("TEST_DATABASE_URL")
    kind = "postgresql" if pg else "sqlite"
    if pg:
        args += ["--db", "postgresql", "--pg-admin-url", pg, "--pg-database", f"nvr_bqa_{os.getpid()}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NVR_")}
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    result = json.loads((out_dir / f"access-{kind}.json").read_text())
    assert set(result["figures_ms"]) == {"typical", "worst", "denial"}
    typical = result["figures_ms"]["typical"]
    assert typical["grant_audit"]["n"] == typical["grant_audit_rules"]["n"] == result["params"]["requests"]
    assert result["check"].startswith("camera_spread raised")


def test_bench_live_quick(tmp_path: Path) -> None:
    """bench/live.py --quick: 4 cameras recording, live latency with 1 and 4 viewers and the recorder's CPU; it exits
    non-zero when a phase measured nothing, a viewer failed or a frame was lost while recording."""
    out = tmp_path / "live.json"
    args = [sys.executable, str(ROOT / "bench" / "live.py"), "--quick", "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NVR_")}
    run = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    result = json.loads(out.read_text())
    assert [p["viewers"] for p in result["phases"]] == [0, 1, 4]
    for p in result["phases"][1:]:
        assert p["latency_ms"]["p95"] > 0 and p["fragments_per_viewer_min"] > 0
    assert (result["holes"], result["gaps"], result["problems"]) == (0, 0, [])


def test_bench_playback_quick(tmp_path: Path) -> None:
    """bench/playback.py --quick: a small catalogue, playback and listing latency, and the range phase (playback
    sessions joined by mid-window range requests, after ten ranges checked byte for byte against a full response;
    it exits non-zero when a range is not the exact slice or its Content-Range is wrong)."""
    out_dir = tmp_path / "bench"
    args = [sys.executable, str(ROOT / "bench" / "playback.py"), "--quick", "--data-dir", str(out_dir)]
    pg = os.environ.get("TEST_DATABASE_URL")
    kind = "postgresql" if pg else "sqlite"
    if pg:
        args += ["--db", "postgresql", "--pg-admin-url", pg, "--pg-database", f"nvr_bqp_{os.getpid()}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NVR_")}
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    result = json.loads((out_dir / f"playback-{kind}.json").read_text())
    figures = result["figures_ms"]
    assert figures["range_ttfb"]["n"] == figures["playback_ttfb"]["n"] == 20  # --quick: 20 requests of each kind
    assert result["details"]["range_check"].startswith("10 ranges of a ")


def test_bench_crypto_quick(tmp_path: Path) -> None:
    """bench/crypto.py --quick: SM3/SHA-256 file digests beside ``openssl dgst`` (same digests), SM4-GCM/AES-GCM
    sealing beside ``openssl speed``, SM2/Ed25519 signing; it exits non-zero when a figure is missing or wrong."""
    out = tmp_path / "crypto.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NVR_")}
    args = [sys.executable, str(ROOT / "bench" / "crypto.py"), "--quick", "--out", str(out)]
    run = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    result = json.loads(out.read_text())
    assert {r["same_digests"] for r in result["digests"].values()} == {True}
    assert set(result["aead"]) == {"aes-256-gcm", "sm4-gcm"}
    assert all(r["sign_s"] > 0 and r["verify_s"] > 0 and r["verifies"] for r in result["signatures"].values())


def test_bench_ingest_quick(tmp_path: Path) -> None:
    """bench/ingest.py --quick --encrypt: 2 small cameras recorded by ``nvr record`` plain, then with encryption at
    rest, CPU per stream-minute for both and their ratio; it exits non-zero when a recorder failed, a camera
    recorded nothing, or a segment of the encrypted run is plain (or one of the plain run encrypted)."""
    out = tmp_path / "ingest.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NVR_")}
    args = [sys.executable, str(ROOT / "bench" / "ingest.py"), "--quick", "--encrypt", "--out", str(out)]
    run = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    (entry,) = json.loads(out.read_text())["results"]
    assert entry["runs"] == ["nvr", "nvr-enc"]
    plain, enc = entry["nvr"], entry["nvr-enc"]
    assert plain["segment_columns"]["plain"] == plain["segments"] > 0
    assert enc["segment_columns"]["encryption=aes-256-gcm"] == enc["segments"] > 0
    assert plain["cpu_s_per_stream_minute"] > 0 and enc["cpu_s_per_stream_minute"] > 0
    assert entry["encryption_overhead"]["ed25519-sha256"]["cpu"] > 0


def test_no_bench_script_shadows_a_project_package() -> None:
    """A script's folder is first on ``sys.path``, so ``bench/retention.py`` once replaced the ``retention`` package
    for everything bench/ingest.py's children imported (``cannot import name 'policies' from 'retention'``)."""
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert {"nvr", "retention", "storage"} <= packages
    scripts = {p.stem for p in (ROOT / "bench").glob("*.py")}
    assert scripts.isdisjoint(packages), scripts & packages
