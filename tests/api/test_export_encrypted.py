"""Encrypted export copies over HTTP (docs/exports/encrypted-copies.md): a request naming a recipient key goes
through the usual two-person approval, the job serves an envelope only that key opens (no plain ZIP left on the
server), the audit names the key's fingerprint at every step, and the copy decrypts and verifies offline."""

from __future__ import annotations

import hashlib
import json
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import select

from api import exports
from integrity import envelope
from nvr.clock import FakeClock
from nvr.errors import NvrError
from nvr.models import AuditEvent, ExportRequest
from nvr.runtime import Runtime
from tests.api.conftest import Api
from tests.api.test_exports import SEG_US, V1, _code, _file, _nvr, _people, _wait_job
from tests.support.api_server import running_api

SUITE_OF = {"x25519": "ed25519-sha256", "sm2": "sm2-sm3"}


@pytest.fixture
def suite_api(request: pytest.FixtureRequest, settings_factory, tmp_path: Path) -> Iterator[Api]:
    """The ``api`` fixture (tests/api/conftest.py) over an archive of the suite ``request.param`` names."""
    clock = FakeClock(start_us=time.time_ns() // 1000)
    rt = Runtime.open(settings_factory(crypto_suite=request.param), clock=clock)
    rt.init_default_volume()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    apps: list[Any] = []
    with running_api(rt, clock, apps) as url:
        yield Api(rt, clock, url, scratch, apps=apps)
    rt.db.dispose()


def _approved(api: Api, pem: str) -> int:
    """A request for cam-a with ``pem`` as recipient key, filed, co-signed and approved."""
    a = api.camera("cam-a", segments=3, unit="Unit A")
    _people(api)
    r = _file(api, "off1", ["cam-a"], a[0], a[0] + 2 * SEG_US, recipient_public_key=pem)
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    with api.client("off2") as c:
        assert c.post(f"{V1}/exports/{rid}/cosign").status_code == 200
    with api.client("appr-a") as c:
        assert c.post(f"{V1}/exports/{rid}/approve", json={"reason": "letter checked"}).json()["state"] == "approved"
    return rid


@pytest.mark.parametrize(
    ("suite_api", "key_type"), [("ed25519-sha256", "x25519"), ("sm2-sm3", "sm2")], indirect=["suite_api"]
)
def test_an_export_to_a_recipient_key_opens_only_with_that_key_and_verifies(
    suite_api: Api, tmp_path: Path, key_type: str
) -> None:
    api = suite_api
    private, public = envelope.generate_key_pair(key_type)
    other_private, _ = envelope.generate_key_pair(key_type)
    fp = envelope.parse_recipient(public).fingerprint
    rid = _approved(api, public)
    with api.client("off1") as c:
        view = c.get(f"{V1}/exports/{rid}").json()
    assert view["encryption"]["recipient_key_type"] == key_type
    assert view["encryption"]["recipient_key_fingerprint"] == fp
    assert view["encryption"]["cipher"] == envelope.CIPHER_OF[key_type]

    with api.client("off2") as c:
        assert c.post(f"{V1}/exports/{rid}/job").status_code == 202
    job = _wait_job(api, "off1", rid)
    assert job["state"] == "done", job
    exports_dir = api.rt.settings.exports_dir
    names = sorted(p.name for p in exports_dir.iterdir() if p.is_file())
    assert names == [f"export-{rid}-{job['id']}.zip{envelope.SUFFIX}"], names  # the plain ZIP is gone

    with api.client("off1") as c:
        r = c.get(f"{V1}/exports/{rid}/bundle", params={"destination": "courier to City Court"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"].endswith(f'.zip{envelope.SUFFIX}"')
    assert r.content.startswith(envelope.MAGIC) and b"PK\x03\x04" not in r.content[:200]
    sealed = tmp_path / "copy.zip.nvrenc"
    sealed.write_bytes(r.content)
    assert envelope.read_header(sealed).fingerprint == fp
    assert r.headers["x-bundle-sha256"] == job["bundle_sha256"] == hashlib.sha256(r.content).hexdigest()

    # The audit names the recipient key at filing, co-signature, approval, job start and each download.
    with api.rt.db.session() as s:
        events = s.scalars(
            select(AuditEvent).where(AuditEvent.object_id == f"export:{rid}").order_by(AuditEvent.seq)
        ).all()
        row = s.get(ExportRequest, rid)
        assert row is not None and (row.recipient_key_type, row.recipient_key_fingerprint) == (key_type, fp)
    note = f"encrypted to {key_type} key {fp}"
    for action in ("export.request", "export.cosign", "export.approve", "export.job.start", "export.download"):
        found = [ev for ev in events if ev.action == action and ev.outcome == "ok"]
        assert found and all((ev.reason or "").startswith(note) for ev in found), action
    download = next(ev for ev in events if ev.action == "export.download")
    assert download.destination == "courier to City Court"

    # Offline: another recipient's key is refused and leaves nothing; the right key opens it, and it verifies.
    other = tmp_path / "other.pem"
    other.write_bytes(other_private)
    refused = _nvr("decrypt-export", str(sealed), "--key", str(other), "-o", str(tmp_path / "nope.zip"))
    assert refused.returncode == 2 and "envelope_wrong_recipient" in refused.stderr, refused.stderr
    assert not (tmp_path / "nope.zip").exists()
    key = tmp_path / "recipient.pem"
    key.write_bytes(private)
    opened = _nvr("decrypt-export", str(sealed), "--key", str(key))
    assert opened.returncode == 0, opened.stderr
    plain = tmp_path / "copy.zip"
    with zipfile.ZipFile(plain) as z:
        manifest = json.loads(z.read("manifest.json"))
    fingerprint = manifest["crypto"]["fingerprint"]
    out = _nvr("verify-export", str(plain), "--trusted-key", fingerprint, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["result"] == "valid"
    assert manifest["crypto"]["suite"] == SUITE_OF[key_type]
    # verify-export takes the envelope itself with --key; without it, it says what to do.
    both = _nvr("verify-export", str(sealed), "--key", str(key), "--trusted-key", fingerprint)
    assert both.returncode == 0 and both.stdout.startswith("valid"), both.stdout + both.stderr
    keyless = _nvr("verify-export", str(sealed), "--trusted-key", fingerprint)
    assert keyless.returncode == 3 and "envelope_needs_key" in keyless.stdout and "decrypt-export" in keyless.stdout
    wrong = _nvr("verify-export", str(sealed), "--key", str(other), "--trusted-key", fingerprint)
    assert wrong.returncode == 3 and "envelope_wrong_recipient" in wrong.stdout


def _ed25519_public() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def test_a_bad_recipient_key_is_refused_when_filing(api: Api) -> None:
    a = api.camera("cam-a", segments=2, unit="Unit A")
    _people(api)
    private, _ = envelope.generate_key_pair("x25519")
    for pem in (
        "not a key",
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        _ed25519_public(),
        private.decode(),  # a private key is never stored or audited
    ):
        r = _file(api, "off1", ["cam-a"], a[0], a[0] + SEG_US, recipient_public_key=pem)
        assert _code(r) == (422, "recipient_key_invalid"), r.text
        assert "Traceback" not in r.text
    with api.rt.db.session() as s:
        assert s.scalars(select(ExportRequest)).all() == []
        assert not [ev for ev in s.scalars(select(AuditEvent)).all() if private.decode()[40:80] in (ev.reason or "")]


def test_without_a_recipient_key_the_bundle_is_the_plain_zip(api: Api) -> None:
    a = api.camera("cam-a", segments=2, unit="Unit A")
    _people(api)
    r = _file(api, "off1", ["cam-a"], a[0], a[0] + SEG_US)
    assert r.status_code == 201 and r.json()["encryption"] is None
    with api.rt.db.session() as s:
        ev = s.scalars(select(AuditEvent).where(AuditEvent.action == "export.request")).one()
        assert "encrypted to" not in (ev.reason or "")


@pytest.mark.parametrize(
    ("suite_api", "key_type"), [("ed25519-sha256", "sm2"), ("sm2-sm3", "x25519")], indirect=["suite_api"]
)
def test_a_key_of_the_other_suite_is_refused_when_filing(suite_api: Api, key_type: str) -> None:
    """An SM2 archive never sends AES-GCM copies, an Ed25519 archive never SM4 ones (integrity.suites)."""
    a = suite_api.camera("cam-a", segments=2, unit="Unit A")
    _people(suite_api)
    _, public = envelope.generate_key_pair(key_type)
    r = _file(suite_api, "off1", ["cam-a"], a[0], a[0] + SEG_US, recipient_public_key=public)
    assert _code(r) == (422, "recipient_key_suite_mismatch")
    assert key_type.upper() in r.json()["error"]["message"]


@dataclass
class _Result:  # the fields of storage.bundle.BundleResult the envelope step reads and replaces
    path: Path
    bytes: int
    sha256: str | None
    manifest_sha256: str


def test_a_cancelled_or_failed_encryption_leaves_no_plain_zip(api: Api) -> None:
    _, public = envelope.generate_key_pair("x25519")
    rid = _approved(api, public)
    with api.client("off1") as c:
        assert c.post(f"{V1}/exports/{rid}/job").status_code == 202
    job = _wait_job(api, "off1", rid)
    d = api.rt.settings.exports_dir
    plain = d / f"export-{rid}-{job['id']}-again.zip"
    plain.write_bytes(b"PK\x03\x04" + b"\x00" * (3 << 20))
    with pytest.raises(NvrError) as exc:
        exports.seal_for_recipient(api.rt.db, job["id"], _Result(plain, 0, None, "m"), cancelled=lambda: True)
    assert exc.value.code == "export_cancelled"
    assert not plain.exists() and not list(d.glob(".*partial")) and not list(d.glob("*again*"))
    # What a job that died while encrypting leaves is removed when it is failed (api.export_jobs._cleanup_files).
    left = [d / f"export-{rid}-999.zip", d / f".export-{rid}-999.zip.nvrenc.abc.partial"]
    for p in left:
        p.write_bytes(b"x")
    exports.remove_unpublished(d, 999)
    assert not any(p.exists() for p in left)
    assert (d / f"export-{rid}-{job['id']}.zip{envelope.SUFFIX}").exists()  # the published envelope stays
