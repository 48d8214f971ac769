"""Export bundles made the way the export job makes them, and the offline checks run on them: `nvr verify-export`
as a subprocess with no data folder or database, and VERIFY.txt's standard-tools recipe run exactly as written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from api import export_jobs
from integrity import checkpoints, keys, signing
from integrity.bundle_verify import verify_bundle
from nvr.runtime import Runtime
from storage import bundle
from storage.bundle import write_bundle
from storage.keyring import Keyring

MIN = 60_000_000
S = 1_000_000
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
EXPORT = {
    "request_id": 21,
    "job_id": 22,
    "purpose": "traffic accident",
    "case_ref": "CASE-SM-7",
    "legal_basis": "art. 54",
    "recipient": "court",
    "destination": "sealed disc",
    "route": "approval",
    "grant_id": None,
    "requester": None,
    "cosigner": None,
    "approvers": [],
}


@dataclass
class Made:
    path: Path
    fingerprint: str
    signer: signing.Signer
    manifest: dict


def make_bundle(
    rt: Runtime,
    out: Path,
    start_us: int,
    end_us: int,
    cameras: tuple[str, ...] = ("cam1",),
    progress: Callable[[int, int], None] | None = None,
) -> Made:
    """A bundle the way the export job makes one: rows from the catalogue (api.export_jobs.rows_in), the earliest
    trusted checkpoint covering them, bundle_input, write_bundle with the server's keyring."""
    with rt.db.session() as s:
        signer = keys.active_signer(s, rt.settings.keys_dir)
        trusted = keys.trusted_keys(s, rt.settings)
        originals = {c: export_jobs.rows_in(s, c, start_us, end_us) for c in cameras}
        chosen = {}
        for c, rows in originals.items():
            cp = checkpoints.covering(s, c, int(rows[-1]["seq"]), trusted)
            assert cp is not None
            chosen[c] = cp
        inp = export_jobs.bundle_input(
            s,
            dict(EXPORT),
            originals,
            chosen,
            export_jobs.database_id_of(s),
            (start_us, end_us),
            rt.clock.now_us(),
            trusted,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    ring = Keyring(rt.settings.master_keys_dir)
    write_bundle(out, inp, signer, work_dir=out.parent / "work", keyring=ring, progress=progress)
    return Made(out, signer.public.fingerprint, signer, json.loads(member(out, "manifest.json")))


def member(path: Path, name: str) -> bytes:
    with zipfile.ZipFile(path) as z:
        return z.read(name)


def rewrite(src: Path, dst: Path, replace: dict[str, bytes | None]) -> Path:
    """A copy of the bundle with members replaced (None: removed), as a forger would write it: a valid ZIP."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            if info.filename in replace:
                data = replace[info.filename]
                if data is not None:
                    zout.writestr(info.filename, data)
            else:
                zout.writestr(info.filename, zin.read(info))
    return dst


def resigned(made: Made, dst: Path, manifest: dict) -> Path:
    body = (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    return rewrite(made.path, dst, {"manifest.json": body, "manifest.sig": made.signer.sign(body)})


def failed(path: Path, fingerprint: str) -> dict[str, str]:
    return {c.name: c.detail for c in verify_bundle(path, fingerprint).failed}


def nvr_verify_export(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    """The CLI on a machine with no data folder, no settings and no database."""
    home.mkdir(exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "XDG_DATA_HOME": str(home / "xdg")}
    return subprocess.run(
        [sys.executable, "-m", "nvr", "verify-export", *args],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def recipe(bundle_path: Path, trusted: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    """Run VERIFY.txt's standard-tools commands exactly as written there, with BUNDLE and TRUSTED set; each must
    exit 0 (as the text says), the first that does not stops the run and is named."""
    commands = bundle.verify_commands(member(bundle_path, "VERIFY.txt").decode())
    assert commands[0].startswith("nvr verify-export ")
    manual = commands[1:]
    assert manual[0].startswith("BUNDLE=") and manual[1].startswith("TRUSTED=")
    lines = [f"BUNDLE='{bundle_path}'", f"TRUSTED='{trusted}'"]
    lines += [f"{c} || {{ echo 'STEP FAILED: {i}'; exit 1; }}" for i, c in enumerate(manual[2:], 3)]
    workdir.mkdir()
    return subprocess.run(["sh", "-c", "\n".join(lines)], cwd=workdir, capture_output=True, text=True, timeout=120)


def openssl_sm3(path: Path) -> str:
    out = subprocess.run(["openssl", "dgst", "-sm3", "-r", str(path)], capture_output=True, text=True, check=True)
    return out.stdout.split()[0]
