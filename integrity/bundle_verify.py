"""Offline verification of an export bundle: no server, no database, nothing but the ZIP and a trusted fingerprint.

The checks, each reported by name (docs/exports/bundle.md):

- ``bundle readable``: a ZIP whose central directory reads, with a ``manifest.json`` of at most 64 MiB.
- ``zip members``: member names are plain relative paths (no ``..``, no absolute paths, no backslashes), none
  repeated, no directories or links, nothing encrypted, every member stored (not compressed).
- ``signed``: ``manifest.sig`` and ``public_key.pem`` are there (else the result is ``unsigned``).
- ``trusted key``: ``public_key.pem``'s fingerprint is the trusted one and matches ``public_key.sha256`` and the
  manifest's ``crypto``.
- ``manifest signature``: ``manifest.sig`` is that key's signature over manifest.json's exact bytes.
- ``manifest format``: the manifest has the structure this verifier knows (format, version, types).
- ``SHA256SUMS``: its hash is the manifest's ``sha256sums_sha256`` and it lists exactly the manifest's files.
- ``no unlisted members``: nothing in the ZIP that the manifest does not list (besides manifest.json,
  manifest.sig and SHA256SUMS).
- ``original hashes``, ``convenience hashes``, ``file hashes``: every listed file is present and hashes to the
  listed SHA-256 and size; an original also to its segment row's, a convenience file to its camera's entry.
  A member whose ZIP CRC-32 fails is reported here too.
- ``chain <camera>``: every original's link recomputes from its row, rows are consecutive (seq and prev_link),
  continue through the bridge rows and end exactly at the referenced checkpoint's ``{seq, link}`` for the camera.
- ``checkpoint <id>``: the checkpoint's body is an ``nvr-checkpoint`` of this database, signed by its key: the
  bundle's signing key, or a key in the manifest's ``keys`` whose file is listed with its hash (so the signed
  manifest vouches for it) and whose fingerprint matches.

Result: ``unreadable`` when the bundle cannot be read at all, ``invalid`` when any other check fails,
``unsigned`` when only the signature is missing, otherwise ``valid``. Nothing here raises on bad input: a
truncated or corrupt file becomes a failed check. Members are streamed in chunks, never read whole, except the
manifest, SHA256SUMS and key files, which have size limits. Imports only integrity.chain and integrity.signing.
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from integrity import chain, signing
from nvr.errors import NvrError

FORMAT = "nvr-export-bundle"
VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
SUMS = "SHA256SUMS"
PUBLIC_KEY = "public_key.pem"
FINGERPRINT = "public_key.sha256"
UNLISTED_OK = {MANIFEST, SIGNATURE, SUMS}
MAX_MANIFEST = 64 << 20
MAX_SMALL = 1 << 20  # signature, keys, fingerprint file
CHUNK = 8 << 20
DETAIL_ITEMS = 10
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "problems": self.problems}


@dataclass
class Report:
    result: str  # valid | invalid | unsigned | unreadable
    checks: list[Check]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def as_dict(self) -> dict[str, Any]:
        return {"result": self.result, "checks": [c.as_dict() for c in self.checks], **self.summary}


class _Unreadable(Exception):
    pass


class _Format(Exception):
    pass


def _detail(problems: list[str], ok_text: str) -> str:
    if not problems:
        return ok_text
    shown = "; ".join(problems[:DETAIL_ITEMS])
    more = len(problems) - DETAIL_ITEMS
    return shown + (f"; and {more} more" if more > 0 else "")


def _hex64(v: object) -> bool:
    return isinstance(v, str) and bool(_HEX64.fullmatch(v))


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise _Format(what)


def _check_format(m: object) -> None:
    """Raise _Format naming the first thing the verifier cannot work with."""
    _need(isinstance(m, dict), "manifest.json is not a JSON object")
    assert isinstance(m, dict)
    _need(m.get("format") == FORMAT, f"format is {m.get('format')!r}, not {FORMAT!r}")
    _need(m.get("version") == VERSION, f"version {m.get('version')!r} is not {VERSION}")
    crypto = m.get("crypto")
    _need(isinstance(crypto, dict) and isinstance(crypto.get("suite"), str), "crypto.suite missing")
    _need(isinstance(m.get("database_id"), str), "database_id missing")
    files = m.get("files")
    _need(isinstance(files, list), "files is not a list")
    for i, f in enumerate(files):  # type: ignore[arg-type]
        _need(
            isinstance(f, dict) and isinstance(f.get("path"), str) and _hex64(f.get("sha256")) and _int(f.get("bytes")),
            f"files[{i}] is not {{path, sha256, bytes}}",
        )
    _need(_hex64(m.get("sha256sums_sha256")), "sha256sums_sha256 missing")
    for name in ("checkpoints", "keys", "cameras"):
        _need(isinstance(m.get(name), list) and all(isinstance(x, dict) for x in m[name]), f"{name} is not a list")
    for i, cp in enumerate(m["checkpoints"]):
        _need(
            _int(cp.get("id")) and all(isinstance(cp.get(k), str) for k in ("key_id", "suite", "body", "signature")),
            f"checkpoints[{i}] lacks id, key_id, suite, body or signature",
        )
    for i, k in enumerate(m["keys"]):
        _need(
            all(isinstance(k.get(x), str) for x in ("key_id", "suite", "fingerprint", "path")),
            f"keys[{i}] lacks key_id, suite, fingerprint or path",
        )
    for i, cam in enumerate(m["cameras"]):
        _need(isinstance(cam.get("id"), str), f"cameras[{i}].id missing")
        for part in ("segments", "bridge", "convenience"):
            _need(
                isinstance(cam.get(part), list) and all(isinstance(x, dict) for x in cam[part]),
                f"camera {cam['id']}: {part} is not a list",
            )
        for row in cam["segments"] + cam["bridge"]:
            missing = [f for f in (*chain.LINKED_FIELDS, "prev_link", "link") if f not in row]
            _need(not missing, f"camera {cam['id']}: a row lacks {missing}")
            _need(_int(row["seq"]) and isinstance(row["prev_link"], str), f"camera {cam['id']}: bad row")
        for row in cam["segments"]:
            _need(isinstance(row.get("path"), str), f"camera {cam['id']} seq {row['seq']}: no path")
        for c in cam["convenience"]:
            _need(
                isinstance(c.get("path"), str) and isinstance(c.get("sha256"), str) and _int(c.get("bytes")),
                f"camera {cam['id']}: a convenience entry lacks path, sha256 or bytes",
            )
        _need(_int(cam.get("checkpoint_id")) or not cam["segments"], f"camera {cam['id']}: no checkpoint_id")


def _safe_name(name: str) -> str | None:
    """Why a member name is unsafe to extract, or None."""
    if not name or name.startswith(("/", "\\")) or "\\" in name or re.match(r"^[A-Za-z]:", name):
        return "absolute or non-POSIX path"
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "'..', '.' or empty path component"
    if any(ord(ch) < 32 for ch in name):
        return "control character in name"
    return None


class _Verifier:
    def __init__(self, path: Path, trusted: str) -> None:
        self.path = path
        self.trusted = trusted
        self.checks: list[Check] = []
        self.summary: dict[str, Any] = {}
        self.zf: zipfile.ZipFile | None = None
        self.members: dict[str, zipfile.ZipInfo] = {}
        self.hashes: dict[str, tuple[str | None, int, str | None]] = {}  # path -> (sha256, bytes, read error)

    def add(self, name: str, problems: list[str], ok_text: str = "ok") -> bool:
        self.checks.append(Check(name, not problems, _detail(problems, ok_text), problems))
        return not problems

    # -- reading ------------------------------------------------------------------------------------------------
    def read_small(self, name: str, limit: int) -> bytes:
        info = self.members[name]
        if info.file_size > limit:
            raise _Unreadable(f"{name} is {info.file_size} bytes, over the {limit}-byte limit")
        assert self.zf is not None
        with self.zf.open(info) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise _Unreadable(f"{name} is over the {limit}-byte limit")
        return data

    def small(self, name: str, limit: int = MAX_SMALL) -> tuple[bytes | None, str | None]:
        try:
            return self.read_small(name, limit), None
        except _Unreadable as exc:
            return None, str(exc)
        except Exception as exc:  # CRC error, truncated member, bad header
            return None, f"{name} cannot be read: {exc}"

    def stream_hash(self, name: str) -> tuple[str | None, int, str | None]:
        if name in self.hashes:
            return self.hashes[name]
        assert self.zf is not None
        h = hashlib.sha256()
        n = 0
        err = None
        try:
            with self.zf.open(self.members[name]) as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    n += len(chunk)
        except Exception as exc:
            err = f"cannot be read ({exc})"
        result = (None if err else h.hexdigest(), n, err)
        self.hashes[name] = result
        return result

    # -- the checks ---------------------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self.zf = zipfile.ZipFile(self.path)
            infos = self.zf.infolist()
        except Exception as exc:
            raise _Unreadable(f"not a readable ZIP file (truncated or corrupt?): {exc}") from None
        self.member_checks(infos)
        if MANIFEST not in self.members:
            raise _Unreadable("the bundle has no manifest.json")
        try:
            body = self.read_small(MANIFEST, MAX_MANIFEST)
        except _Unreadable:
            raise
        except Exception as exc:
            raise _Unreadable(f"manifest.json cannot be read: {exc}") from None
        self.checks.insert(0, Check("bundle readable", True, f"{len(infos)} members"))
        manifest: Any = None
        fmt_problem = None
        try:
            manifest = json.loads(body.decode("utf-8"))
            _check_format(manifest)
        except (ValueError, UnicodeDecodeError) as exc:
            fmt_problem = f"manifest.json is not valid UTF-8 JSON: {exc}"
        except _Format as exc:
            fmt_problem = str(exc)
        except Exception as exc:
            fmt_problem = f"manifest.json has an unexpected structure: {exc}"
        suite = signing.DEFAULT_SUITE
        if not fmt_problem:
            suite = manifest["crypto"]["suite"]
        self.signature_checks(body, manifest if not fmt_problem else None, suite)
        self.add("manifest format", [fmt_problem] if fmt_problem else [])
        if fmt_problem:
            return
        self.summarise(manifest)
        self.file_checks(manifest)
        self.chain_checks(manifest)

    def member_checks(self, infos: list[zipfile.ZipInfo]) -> None:
        problems = []
        for info in infos:
            name = info.filename
            why = _safe_name(name)
            if why:
                problems.append(f"{name!r}: {why}")
            if name in self.members:
                problems.append(f"{name!r}: appears more than once")
            file_type = stat.S_IFMT(info.external_attr >> 16)  # 0 when the writer recorded no Unix type
            if info.is_dir() or file_type not in (0, stat.S_IFREG):
                problems.append(f"{name!r}: not a regular file")
            if info.flag_bits & 0x1:
                problems.append(f"{name!r}: encrypted")
            if info.compress_type != zipfile.ZIP_STORED:
                problems.append(f"{name!r}: compressed (method {info.compress_type}), not stored")
            self.members.setdefault(name, info)
        self.add("zip members", problems, f"{len(infos)} members, all stored, plain names")

    def signature_checks(self, body: bytes, manifest: dict | None, suite: str) -> None:
        missing = [n for n in (SIGNATURE, PUBLIC_KEY) if n not in self.members]
        self.add("signed", [f"{n} is missing" for n in missing], "manifest.sig and public_key.pem present")
        if missing:
            return
        pem, err = self.small(PUBLIC_KEY)
        info = None
        problems: list[str] = []
        if err:
            problems.append(err)
        else:
            try:
                info = signing.public_key_info(suite, pem or b"")
            except NvrError as exc:
                problems.append(f"public_key.pem: {exc.message}")
        try:
            trusted = signing.normalise_fingerprint(self.trusted)
        except NvrError as exc:
            trusted = None
            problems.append(f"the trusted fingerprint given is not usable: {exc.message}")
        if info is not None and trusted is not None:
            self.summary["key_id"] = info.key_id
            self.summary["fingerprint"] = info.fingerprint
            if info.fingerprint != trusted:
                problems.append(f"public_key.pem has fingerprint {info.fingerprint}, not the trusted {trusted}")
            fp_file, fp_err = self.small(FINGERPRINT) if FINGERPRINT in self.members else (None, "missing")
            if fp_err or (fp_file or b"").decode("ascii", "replace").strip() != info.fingerprint:
                problems.append(f"public_key.sha256 does not hold the key's fingerprint ({fp_err or 'differs'})")
            crypto = (manifest or {}).get("crypto", {})
            if manifest is not None and (
                crypto.get("fingerprint") != info.fingerprint or crypto.get("key_id") != info.key_id
            ):
                problems.append("the manifest's crypto.fingerprint/key_id do not name public_key.pem")
        self.add("trusted key", problems, f"key {info.key_id if info else '?'} is the trusted key")
        sig, err = self.small(SIGNATURE)
        sig_problems = []
        if err:
            sig_problems.append(err)
        elif pem is not None:
            try:
                if not signing.verify(suite, pem, body, sig or b""):
                    sig_problems.append("manifest.sig is not public_key.pem's signature of manifest.json")
            except NvrError as exc:
                sig_problems.append(exc.message)
        else:
            sig_problems.append("no public key to check it with")
        self.add("manifest signature", sig_problems, "manifest.json is signed by public_key.pem")

    def summarise(self, m: dict) -> None:
        raw_export = m.get("export")
        export: dict = raw_export if isinstance(raw_export, dict) else {}
        raw_window = export.get("window")
        window: dict = raw_window if isinstance(raw_window, dict) else {}
        self.summary.update(
            cameras=[c["id"] for c in m["cameras"]],
            window={"start": window.get("start"), "end": window.get("end")},
            case_ref=export.get("case_ref"),
            created=m.get("created"),
            checkpoints=sorted({c.get("checkpoint_id") for c in m["cameras"] if c.get("checkpoint_id") is not None}),
        )

    def file_checks(self, m: dict) -> None:
        listed: dict[str, dict] = {}
        dup = []
        for f in m["files"]:
            if f["path"] in listed or f["path"] in UNLISTED_OK:
                dup.append(f"{f['path']} is listed more than once or is a reserved name")
            listed[f["path"]] = f
        # SHA256SUMS
        problems = list(dup)
        if SUMS not in self.members:
            problems.append("SHA256SUMS is missing")
        else:
            data, err = self.small(SUMS, MAX_MANIFEST)
            if err:
                problems.append(err)
            elif hashlib.sha256(data or b"").hexdigest() != m["sha256sums_sha256"]:
                problems.append("SHA256SUMS's hash is not the manifest's sha256sums_sha256")
            else:
                expected = "".join(f"{f['sha256']}  {f['path']}\n" for f in sorted(listed.values(), key=_path))
                if (data or b"").decode("utf-8", "replace") != expected:
                    problems.append("SHA256SUMS does not list exactly the manifest's files")
        self.add("SHA256SUMS", problems, "matches the signed manifest")
        unlisted = sorted(n for n in self.members if n not in listed and n not in UNLISTED_OK)
        self.add("no unlisted members", [f"{n} is in the ZIP but not in the manifest" for n in unlisted])
        # Hashes, grouped.
        rows = {s["path"]: s for c in m["cameras"] for s in c["segments"]}
        conv = {e["path"]: e for c in m["cameras"] for e in c["convenience"]}
        groups: dict[str, list[str]] = {"original hashes": [], "convenience hashes": [], "file hashes": []}
        counts = dict.fromkeys(groups, 0)
        for path in sorted(set(listed) | set(rows) | set(conv)):
            group = "original hashes" if path in rows else "convenience hashes" if path in conv else "file hashes"
            counts[group] += 1
            groups[group].extend(self.file_problems(path, listed.get(path), rows.get(path) or conv.get(path)))
        for group, problems in groups.items():
            self.add(group, problems, f"{counts[group]} file(s) match")

    def file_problems(self, path: str, entry: dict | None, row: dict | None) -> list[str]:
        if entry is None:
            return [f"{path} is not in the manifest's files"]
        if path not in self.members:
            return [f"{path} is missing from the bundle"]
        digest, n, err = self.stream_hash(path)
        if err:
            return [f"{path} {err}"]
        out = []
        if digest != entry["sha256"] or n != entry["bytes"]:
            out.append(f"{path}: SHA-256 {digest} ({n} bytes), listed {entry['sha256']} ({entry['bytes']} bytes)")
        if row is not None and (row.get("sha256") != digest or row.get("bytes") != n):
            out.append(f"{path}: does not match its manifest entry's sha256/bytes")
        return out

    def chain_checks(self, m: dict) -> None:
        keys = {k["key_id"]: k for k in m["keys"]}
        checkpoints = {cp["id"]: cp for cp in m["checkpoints"]}
        verified: dict[int, dict | None] = {}
        for cp_id in sorted({c["checkpoint_id"] for c in m["cameras"] if c["segments"]}):
            verified[cp_id] = self.checkpoint_check(m, checkpoints.get(cp_id), cp_id, keys)
        for cam in m["cameras"]:
            self.chain_check(cam, verified.get(cam.get("checkpoint_id")) if cam["segments"] else None)

    def checkpoint_check(self, m: dict, cp: dict | None, cp_id: int, keys: dict[str, dict]) -> dict | None:
        name = f"checkpoint {cp_id}"
        if cp is None:
            self.add(name, ["not in the manifest's checkpoints"])
            return None
        problems: list[str] = []
        pem = None
        signer = m["crypto"]
        key = keys.get(cp["key_id"])
        if key is not None:
            digest, _, err = self.stream_hash(key["path"]) if key["path"] in self.members else (None, 0, "missing")
            listed = {f["path"]: f["sha256"] for f in m["files"]}
            if err or listed.get(key["path"]) != digest:
                problems.append(f"key file {key['path']} is missing, unreadable or not listed with its hash")
            else:
                data, err = self.small(key["path"])
                try:
                    info = signing.public_key_info(key["suite"], data or b"")
                    if info.fingerprint != key["fingerprint"] or info.key_id != key["key_id"]:
                        problems.append(f"key file {key['path']} does not have the listed fingerprint")
                    else:
                        pem = info.pem
                except NvrError as exc:
                    problems.append(f"key file {key['path']}: {exc.message}")
        elif cp["key_id"] == signer.get("key_id") and PUBLIC_KEY in self.members:
            data, err = self.small(PUBLIC_KEY)
            pem = None if err else (data or b"").decode("ascii", "replace")
        else:
            problems.append(f"signed by key {cp['key_id']}, which the bundle does not carry")
        body: Any = None
        if pem is not None:
            try:
                if not signing.verify(cp["suite"], pem, cp["body"].encode("utf-8"), bytes.fromhex(cp["signature"])):
                    problems.append(f"signature by key {cp['key_id']} does not verify")
            except (NvrError, ValueError) as exc:
                problems.append(f"signature cannot be checked: {getattr(exc, 'message', exc)}")
        try:
            body = json.loads(cp["body"])
            if not isinstance(body, dict) or body.get("type") != "nvr-checkpoint" or body.get("v") not in (1, 2):
                problems.append("body is not an nvr-checkpoint (version 1 or 2)")
            elif body.get("database_id") != m["database_id"]:
                problems.append(f"body is of database {body.get('database_id')}, not {m['database_id']}")
            elif not isinstance(body.get("cameras"), dict):
                problems.append("body has no cameras")
        except ValueError:
            problems.append("body is not JSON")
        self.add(name, problems, f"signed by key {cp['key_id']}")
        return body if not problems else None

    def chain_check(self, cam: dict, body: dict | None) -> None:
        name = f"chain {cam['id']}"
        if not cam["segments"]:
            self.add(name, [], "no originals in the window")
            return
        problems: list[str] = []
        rows = [*cam["segments"], *cam["bridge"]]
        prev: dict | None = None
        for row in rows:
            seq = row["seq"]
            if row["camera_id"] != cam["id"]:
                problems.append(f"seq {seq}: row is of camera {row['camera_id']}")
            if prev is not None and seq != prev["seq"] + 1:
                problems.append(f"seq {seq} follows seq {prev['seq']}")
            if prev is not None and row["prev_link"] != prev["link"]:
                problems.append(f"seq {seq}: prev_link is not seq {prev['seq']}'s link")
            try:
                if chain.link(row["prev_link"], row) != row["link"]:
                    problems.append(f"seq {seq}: link does not recompute from the row")
            except (ValueError, TypeError) as exc:
                problems.append(f"seq {seq}: link cannot be computed ({exc})")
            prev = row
        head = (body or {}).get("cameras", {}).get(cam["id"]) if body else None
        if body is None:
            problems.append(f"checkpoint {cam['checkpoint_id']} is not a valid signed checkpoint")
        elif not isinstance(head, dict):
            problems.append(f"checkpoint {cam['checkpoint_id']} does not cover camera {cam['id']}")
        elif prev is not None and (head.get("seq") != prev["seq"] or head.get("link") != prev["link"]):
            problems.append(
                f"the rows end at seq {prev['seq']}, checkpoint {cam['checkpoint_id']} signs seq {head.get('seq')} "
                f"with another link"
            )
        first, last = cam["segments"][0]["seq"], cam["segments"][-1]["seq"]
        self.add(
            name,
            problems,
            f"seq {first}..{last} chain to checkpoint {cam['checkpoint_id']} (+{len(cam['bridge'])} bridge rows)",
        )


def _path(f: dict) -> str:
    return f["path"]


def _result(checks: Iterable[Check]) -> str:
    failed = {c.name for c in checks if not c.ok}
    if "bundle readable" in failed:
        return "unreadable"
    if failed - {"signed"}:
        return "invalid"
    return "unsigned" if failed else "valid"


def verify_bundle(path: Path, trusted_fingerprint: str) -> Report:
    """Check the bundle at ``path`` against a trusted key fingerprint; never raises on a bad bundle."""
    v = _Verifier(Path(path), trusted_fingerprint)
    try:
        v.run()
    except _Unreadable as exc:
        v.checks.insert(0, Check("bundle readable", False, str(exc), [str(exc)]))
    except Exception as exc:  # a malformed bundle this code did not foresee: still a report, not a traceback
        what = f"the bundle could not be checked: {type(exc).__name__}: {exc}"
        v.checks = [c for c in v.checks if c.name != "bundle readable"]
        v.checks.insert(0, Check("bundle readable", False, what, [what]))
    finally:
        if v.zf is not None:
            v.zf.close()
    return Report(_result(v.checks), v.checks, v.summary)
