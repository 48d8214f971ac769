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
- ``SHA256SUMS`` / ``SM3SUMS``: one list per digest algorithm the manifest's files use; its digest (in its own
  algorithm) is the manifest's ``sha256sums_sha256`` / ``sm3sums_sm3`` and it lists exactly the manifest's files
  of that algorithm.
- ``no unlisted members``: nothing in the ZIP that the manifest does not list (besides manifest.json,
  manifest.sig and the sums lists).
- ``original hashes``, ``convenience hashes``, ``file hashes``: every listed file is present and hashes to the
  listed digest (in the entry's ``alg``) and size; an original also to its segment row's (in the row's
  ``hash_alg``: its ``sha256``, or its ``plain_digest`` when the archive stores it encrypted and the bundle holds
  the plaintext), a convenience file to its camera's entry. A member whose ZIP CRC-32 fails is reported here too.
- ``chain <camera>``: every original's link recomputes from its row (with the row's ``hash_alg``, so a camera whose
  chain crosses a suite change verifies), rows are consecutive (seq and prev_link), continue through the bridge
  rows and end exactly at the referenced checkpoint's ``{seq, link}`` for the camera.

Algorithms: a version-1 manifest (written before suites) has no ``alg``/``hash_alg`` fields and every digest in it
is SHA-256; version 2 names the algorithm of every digest, and a missing name still means SHA-256, the only
algorithm version 1 knew. The signature is checked in the manifest's ``crypto.suite`` (Ed25519 or SM2); the key's
fingerprint is SHA-256 in every suite.
- ``checkpoint <id>``: the checkpoint's body is an ``nvr-checkpoint`` of this database, signed by its key: the
  bundle's signing key, or a key in the manifest's ``keys`` whose file is listed with its hash (so the signed
  manifest vouches for it) and whose fingerprint matches.

Result: ``unreadable`` when the bundle cannot be read at all, ``invalid`` when any other check fails,
``unsigned`` when only the signature is missing, otherwise ``valid``. Nothing here raises on bad input: a
truncated or corrupt file becomes a failed check. Members are streamed in chunks, never read whole, except the
manifest, the sums lists and key files, which have size limits. Imports only integrity.chain, integrity.signing
and integrity.suites.
"""

from __future__ import annotations

import json
import re
import stat
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from integrity import chain, signing, suites
from nvr.errors import NvrError

FORMAT = "nvr-export-bundle"
VERSION = 1
VERSIONS = (1, 2)  # storage.bundle: 1 all SHA-256 and stored bytes, 2 per-digest algorithms and decrypted originals
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
SUMS = "SHA256SUMS"
SUMS_FILES = {"sha256": "SHA256SUMS", "sm3": "SM3SUMS"}
SUMS_KEYS = {"sha256": "sha256sums_sha256", "sm3": "sm3sums_sm3"}
PUBLIC_KEY = "public_key.pem"
FINGERPRINT = "public_key.sha256"
UNLISTED_OK = {MANIFEST, SIGNATURE, *SUMS_FILES.values()}
_HASH_NAMES = {"sha256": "SHA-256", "sm3": "SM3"}
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


def _alg(entry: dict, field_name: str = "alg") -> str:
    """The algorithm of an entry's digest: its ``alg`` (a file) or ``hash_alg`` (a row); absent means SHA-256, the
    only algorithm of version-1 bundles."""
    return str(entry.get(field_name) or suites.DEFAULT_HASH)


def _known_alg(v: object) -> bool:
    return v is None or v in suites.HASH_ALGS


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise _Format(what)


def _check_format(m: object) -> None:
    """Raise _Format naming the first thing the verifier cannot work with."""
    _need(isinstance(m, dict), "manifest.json is not a JSON object")
    assert isinstance(m, dict)
    _need(m.get("format") == FORMAT, f"format is {m.get('format')!r}, not {FORMAT!r}")
    _need(m.get("version") in VERSIONS, f"version {m.get('version')!r} is not one of {', '.join(map(str, VERSIONS))}")
    crypto = m.get("crypto")
    _need(isinstance(crypto, dict) and isinstance(crypto.get("suite"), str), "crypto.suite missing")
    assert isinstance(crypto, dict)
    _need(crypto["suite"] in suites.SUITES, f"crypto.suite {crypto['suite']!r} is not a known suite")
    _need(_known_alg(crypto.get("hash")), f"crypto.hash {crypto.get('hash')!r} is not a known hash")
    _need(isinstance(m.get("database_id"), str), "database_id missing")
    files = m.get("files")
    _need(isinstance(files, list), "files is not a list")
    for i, f in enumerate(files):  # type: ignore[arg-type]
        _need(
            isinstance(f, dict)
            and isinstance(f.get("path"), str)
            and _hex64(f.get("sha256"))
            and _int(f.get("bytes"))
            and _known_alg(f.get("alg")),
            f"files[{i}] is not {{path, sha256, bytes[, alg]}} with a known alg",
        )
    if m.get("version") == VERSION:  # version 2's lists are checked one by one (sums_check)
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
            _need(_known_alg(row.get("hash_alg")), f"camera {cam['id']} seq {row['seq']}: unknown hash_alg")
        for row in cam["segments"]:
            _need(isinstance(row.get("path"), str), f"camera {cam['id']} seq {row['seq']}: no path")
            if row.get("content") is not None:
                _need(
                    row["content"] == "plaintext" and _hex64(row.get("plain_digest")) and _int(row.get("plain_bytes")),
                    f"camera {cam['id']} seq {row['seq']}: content is not 'plaintext' with plain_digest, plain_bytes",
                )
        for c in cam["convenience"]:
            _need(
                isinstance(c.get("path"), str)
                and isinstance(c.get("sha256"), str)
                and _int(c.get("bytes"))
                and _known_alg(c.get("alg")),
                f"camera {cam['id']}: a convenience entry lacks path, sha256 or bytes, or has an unknown alg",
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
        self.hashes: dict[tuple[str, str], tuple[str | None, int, str | None]] = {}
        """(path, alg) -> (digest, bytes, read error)"""

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

    def stream_hash(self, name: str, alg: str = suites.DEFAULT_HASH) -> tuple[str | None, int, str | None]:
        if (name, alg) in self.hashes:
            return self.hashes[(name, alg)]
        assert self.zf is not None
        h = suites.new_hash(alg)
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
        self.hashes[(name, alg)] = result
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
        crypto = manifest.get("crypto") if isinstance(manifest, dict) else None
        if isinstance(crypto, dict) and crypto.get("suite") in suites.SUITES:
            suite = crypto["suite"]  # even in a manifest this verifier cannot read further: a signature is checkable
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
            suite=m["crypto"]["suite"],
            hash_algs=sorted({_alg(f) for f in m["files"]}),
            checkpoints=sorted({c.get("checkpoint_id") for c in m["cameras"] if c.get("checkpoint_id") is not None}),
        )

    def file_checks(self, m: dict) -> None:
        listed: dict[str, dict] = {}
        dup = []
        for f in m["files"]:
            if f["path"] in listed or f["path"] in UNLISTED_OK:
                dup.append(f"{f['path']} is listed more than once or is a reserved name")
            listed[f["path"]] = f
        if dup:
            self.add("files listed once", dup)
        by_alg: dict[str, list[dict]] = {}
        for f in listed.values():
            by_alg.setdefault(_alg(f), []).append(f)
        for alg in suites.HASH_ALGS:
            if alg in by_alg or (alg == suites.DEFAULT_HASH and m["version"] == VERSION) or SUMS_KEYS[alg] in m:
                self.sums_check(m, alg, by_alg.get(alg, []))
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

    def sums_check(self, m: dict, alg: str, files: list[dict]) -> None:
        """The sums list of ``alg``: present, its digest (in ``alg``) the manifest's, listing exactly ``files``."""
        name, key = SUMS_FILES[alg], SUMS_KEYS[alg]
        problems = []
        if name not in self.members:
            problems.append(f"{name} is missing")
        elif not _hex64(m.get(key)):
            problems.append(f"the manifest has no {key} for {name}")
        else:
            data, err = self.small(name, MAX_MANIFEST)
            if err:
                problems.append(err)
            elif suites.digest(alg, data or b"") != m[key]:
                problems.append(f"{name}'s {_HASH_NAMES[alg]} is not the manifest's {key}")
            else:
                expected = "".join(f"{f['sha256']}  {f['path']}\n" for f in sorted(files, key=_path))
                if (data or b"").decode("utf-8", "replace") != expected:
                    problems.append(f"{name} does not list exactly the manifest's {_HASH_NAMES[alg]} files")
        self.add(name, problems, "matches the signed manifest")

    def file_problems(self, path: str, entry: dict | None, row: dict | None) -> list[str]:
        if entry is None:
            return [f"{path} is not in the manifest's files"]
        if path not in self.members:
            return [f"{path} is missing from the bundle"]
        alg = _alg(entry)
        digest, n, err = self.stream_hash(path, alg)
        if err:
            return [f"{path} {err}"]
        out = []
        if digest != entry["sha256"] or n != entry["bytes"]:
            out.append(
                f"{path}: {_HASH_NAMES[alg]} {digest} ({n} bytes), listed {entry['sha256']} ({entry['bytes']} bytes)"
            )
        if row is not None and "link" in row:  # an original: its member against its segment row
            row_alg = _alg(row, "hash_alg")
            decrypted = row.get("content") == "plaintext"
            if decrypted != (row.get("encryption") is not None):
                out.append(
                    f"{path}: the member is {'plaintext' if decrypted else 'as stored'}, but the row says "
                    f"the segment is {'not ' if decrypted else ''}encrypted at rest"
                )
            want, want_n = (
                (row.get("plain_digest"), row.get("plain_bytes")) if decrypted else (row["sha256"], row["bytes"])
            )
            if row_alg != alg:
                out.append(f"{path}: listed in {alg}, but its segment row is hashed with {row_alg}")
            elif want != digest or want_n != n:
                what = "plain_digest (the archive stores it encrypted)" if decrypted else "sha256"
                out.append(f"{path}: does not match its segment row's {what}/bytes ({row_alg})")
        elif row is not None and (row.get("sha256") != digest or row.get("bytes") != n or _alg(row) != alg):
            out.append(f"{path}: does not match its manifest entry's sha256/bytes/alg")
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
            listed = {f["path"]: f for f in m["files"]}
            key_alg = _alg(listed.get(key["path"], {}))
            digest, _, err = (
                self.stream_hash(key["path"], key_alg) if key["path"] in self.members else (None, 0, "missing")
            )
            if err or listed.get(key["path"], {}).get("sha256") != digest:
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
            except NvrError as exc:
                problems.append(f"seq {seq}: link cannot be computed ({exc.message})")
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
