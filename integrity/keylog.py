"""The pinned key log: which signing keys are trusted, kept outside the database.

Any row in ``signing_keys`` is just a claim: a database writer can insert one with a key of their own. The set of
keys the server trusts lives in ``<data_dir>/keys/keylog.jsonl``, an append-only file beside the private key, one
JSON object a line::

    {"body": "<canonical JSON>", "self_sig": "<hex>", "prev_sig": "<hex>" | null}

whose body is ``{"type": "nvr-key-record", "v": 1, "seq": n, "action": ..., "suite", "public_key_pem",
"fingerprint", "created_us", "prev_fingerprint", "prev_record"}``:

- ``genesis`` (seq 1): the first key, signed by itself. Its fingerprint is the root of trust; pin it out of band
  with the ``trusted_key_fingerprints`` setting, or it is trusted because it is in the keys folder (first use).
- ``rotate``: a new key, signed by itself *and* by the key before it (``prev_sig``), so trust passes both ways:
  whoever trusts any one key of the log can check every other one. ``prev_record`` is the SHA-256 of the previous
  line's body, so lines cannot be dropped, reordered or replaced without the chain showing it.
- ``import``: an older key whose private file is gone (a server upgraded from before this log), vouched for by the
  key active when the log was started (``prev_sig`` by ``prev_fingerprint``); ``self_sig`` is null.
- ``reroot``: a new key made when the previous private key was lost, so nothing could countersign it. Its
  ``self_sig`` alone proves nothing: keys from a reroot on are trusted only if one of them is pinned in
  ``trusted_key_fingerprints`` (or given with ``--trusted-key`` to a verifier).

:func:`load` checks the whole log and returns the trusted keys and every problem found; nothing here trusts the
database.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from integrity import signing
from integrity.chain import canonical_json
from nvr.errors import Kind, NvrError

FILE = "keylog.jsonl"
RECORD_TYPE = "nvr-key-record"
RECORD_VERSION = 1
ACTIONS = ("genesis", "rotate", "import", "reroot")


def path(keys_dir: Path) -> Path:
    return keys_dir / FILE


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    fingerprint: str
    suite: str
    pem: str
    created_us: int
    seq: int
    """The key log record that pinned it (0: pinned only by the ``trusted_key_fingerprints`` setting)."""

    @property
    def public_key_pem(self) -> str:
        return self.pem


@dataclass
class PinnedKeys:
    keys: dict[str, TrustedKey] = field(default_factory=dict)
    """Trusted keys by key id."""
    problems: list[str] = field(default_factory=list)
    """What is wrong with the log: each one a reason some key could not be trusted."""
    untrusted: dict[str, str] = field(default_factory=dict)
    """Key ids in the log that are not trusted, with why."""
    records: list[dict[str, Any]] = field(default_factory=list)
    """The log's lines as read (for bundles and witness copies)."""

    def by_fingerprint(self, fp: str) -> TrustedKey | None:
        return next((k for k in self.keys.values() if k.fingerprint == fp), None)


def _body(
    seq: int,
    action: str,
    info: signing.PublicKey,
    created_us: int,
    prev_fingerprint: str | None,
    prev_record: str | None,
) -> bytes:
    return canonical_json(
        {
            "type": RECORD_TYPE,
            "v": RECORD_VERSION,
            "seq": seq,
            "action": action,
            "suite": info.suite,
            "public_key_pem": info.pem,
            "fingerprint": info.fingerprint,
            "created_us": int(created_us),
            "prev_fingerprint": prev_fingerprint,
            "prev_record": prev_record,
        }
    )


def read_lines(keys_dir: Path) -> list[dict[str, Any]]:
    """The log's records as stored; [] when there is no log. ``keylog_invalid`` when a line is not JSON."""
    p = path(keys_dir)
    try:
        text = p.read_text(encoding="ascii")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise NvrError(Kind.DATA_LOSS, "keylog_invalid", f"the key log {p} cannot be read: {exc}") from None
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise NvrError(Kind.DATA_LOSS, "keylog_invalid", f"the key log {p} line {n} is not JSON") from None
        out.append(rec)
    return out


_local = threading.local()


@contextlib.contextmanager
def locked(keys_dir: Path) -> Iterator[None]:
    """Hold the key log's lock (an exclusive ``flock`` on ``keylog.lock``; re-entrant within a thread), so two
    processes starting at once cannot both start the log or append at the same seq."""
    depth = getattr(_local, "depth", 0)
    if depth:
        _local.depth = depth + 1
        try:
            yield
        finally:
            _local.depth -= 1
        return
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(keys_dir / "keylog.lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _local.depth = 1
        try:
            yield
        finally:
            _local.depth = 0
    finally:
        os.close(fd)


def _append(keys_dir: Path, record: dict[str, Any]) -> None:
    line = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
    fd = os.open(path(keys_dir), os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        os.write(fd, line.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _last(keys_dir: Path) -> tuple[int, str | None, str | None]:
    """(seq, body sha256, fingerprint) of the newest record; (0, None, None) for an empty log."""
    lines = read_lines(keys_dir)
    if not lines:
        return 0, None, None
    body = str(lines[-1].get("body", ""))
    parsed = json.loads(body)
    return int(parsed["seq"]), hashlib.sha256(body.encode("ascii")).hexdigest(), str(parsed["fingerprint"])


def append_key(
    keys_dir: Path,
    new: signing.Signer,
    created_us: int,
    previous: signing.Signer | None = None,
    *,
    action: str | None = None,
) -> str:
    """Pin ``new`` in the log: genesis when the log is empty, else rotate (countersigned by ``previous``) or
    reroot (no previous signer). Returns the action written. Call before the key's database row commits."""
    with locked(keys_dir):
        return _append_key(keys_dir, new, created_us, previous, action)


def _append_key(
    keys_dir: Path, new: signing.Signer, created_us: int, previous: signing.Signer | None, action: str | None
) -> str:
    seq, prev_record, prev_fp = _last(keys_dir)
    if action is None:
        action = "genesis" if seq == 0 else ("rotate" if previous is not None else "reroot")
    if action == "rotate" and (previous is None or previous.public.fingerprint != prev_fp):
        raise NvrError(
            Kind.FAILED_PRECONDITION,
            "keylog_mismatch",
            f"the key log's newest key is {prev_fp}, not the key being rotated out; the log was changed",
        )
    body = _body(seq + 1, action, new.public, created_us, prev_fp, prev_record)
    _append(
        keys_dir,
        {
            "body": body.decode("ascii"),
            "self_sig": new.sign(body).hex(),
            "prev_sig": previous.sign(body).hex() if previous is not None and action == "rotate" else None,
        },
    )
    return action


def import_key(keys_dir: Path, info: signing.PublicKey, created_us: int, voucher: signing.Signer) -> None:
    """Pin an older key whose private half is gone, vouched for by ``voucher`` (the active key)."""
    with locked(keys_dir):
        seq, prev_record, _ = _last(keys_dir)
        body = _body(seq + 1, "import", info, created_us, voucher.public.fingerprint, prev_record)
        _append(keys_dir, {"body": body.decode("ascii"), "self_sig": None, "prev_sig": voucher.sign(body).hex()})


def _sig_ok(suite: str, pem: str, body: bytes, sig: object) -> bool:
    if not isinstance(sig, str):
        return False
    try:
        return signing.verify(suite, pem, body, bytes.fromhex(sig))
    except (ValueError, NvrError):
        return False


def verify_records(records: list[dict[str, Any]], pinned_fps: set[str] | frozenset[str] = frozenset()) -> PinnedKeys:
    """Check a key log's records (see the module docstring). ``pinned_fps``: fingerprints trusted out of band.
    Without any, the genesis record is the root (the log is trusted because it is in the keys folder)."""
    out = PinnedKeys(records=list(records))
    parsed: list[tuple[dict[str, Any], bytes, dict[str, Any]]] = []
    prev_hash: str | None = None
    for n, rec in enumerate(records, start=1):
        text = rec.get("body") if isinstance(rec, dict) else None
        try:
            body = json.loads(text) if isinstance(text, str) else None
        except ValueError:
            body = None
        if not (
            isinstance(body, dict)
            and body.get("type") == RECORD_TYPE
            and body.get("v") == RECORD_VERSION
            and body.get("action") in ACTIONS
        ):
            out.problems.append(f"key log line {n} is not a key record; the log is cut there")
            break
        raw = str(text).encode("ascii", "replace")
        if body.get("seq") != n:
            out.problems.append(f"key log line {n} has seq {body.get('seq')}: a record was removed or reordered")
        if body.get("prev_record") != prev_hash:
            out.problems.append(f"key log line {n} does not continue from the line before it (prev_record differs)")
        try:
            info = signing.public_key_info(str(body.get("suite")), str(body.get("public_key_pem")))
        except NvrError as exc:
            out.problems.append(f"key log line {n}: {exc.message}")
            break
        if info.fingerprint != body.get("fingerprint"):
            out.problems.append(f"key log line {n}: the fingerprint does not belong to the public key")
            break
        parsed.append((body, raw, rec))
        prev_hash = hashlib.sha256(raw).hexdigest()

    # Components: a run of records joined by valid countersignatures. genesis/reroot start a component.
    components: list[list[tuple[dict[str, Any], bool]]] = []
    by_fp: dict[str, tuple[dict[str, Any], int]] = {}
    for i, (body, raw, rec) in enumerate(parsed):
        action, fp = body["action"], body["fingerprint"]
        prev_fp = body.get("prev_fingerprint")
        prev = by_fp.get(prev_fp) if isinstance(prev_fp, str) else None
        if action in ("genesis", "reroot"):
            ok = _sig_ok(body["suite"], body["public_key_pem"], raw, rec.get("self_sig"))
            if action == "genesis" and i != 0:
                out.problems.append(f"key log line {i + 1}: a second genesis record")
                ok = False
            if not ok:
                out.problems.append(f"key log line {i + 1}: the key's own signature does not verify")
            components.append([(body, ok)])
        elif action == "rotate":
            ok = (
                prev is not None
                and _sig_ok(body["suite"], body["public_key_pem"], raw, rec.get("self_sig"))
                and _sig_ok(prev[0]["suite"], prev[0]["public_key_pem"], raw, rec.get("prev_sig"))
            )
            if not ok:
                out.problems.append(f"key log line {i + 1}: the rotation is not signed by both the old and the new key")
            if not components:
                components.append([])
            components[-1].append((body, ok))
        else:  # import: vouched for by prev_fingerprint's key
            ok = prev is not None and _sig_ok(prev[0]["suite"], prev[0]["public_key_pem"], raw, rec.get("prev_sig"))
            if not ok:
                out.problems.append(f"key log line {i + 1}: the imported key is not vouched for by a key of the log")
            if not components:
                components.append([])
            components[-1].append((body, ok))
        by_fp[fp] = (body, i)

    for ci, comp in enumerate(components):
        fps = {b["fingerprint"] for b, _ in comp}
        if pinned_fps:
            rooted = bool(fps & set(pinned_fps))
            why = "none of its keys is in trusted_key_fingerprints"
        else:
            rooted = ci == 0 and comp[0][0]["action"] == "genesis"
            why = "it starts with a reroot (a key made without the old one); pin it in trusted_key_fingerprints"
        # Trust runs through valid links only: a broken record cuts its component there.
        valid_prefix = True
        for body, ok in comp:
            valid_prefix = valid_prefix and ok
            kid = body["fingerprint"][:16]
            if rooted and valid_prefix:
                out.keys[kid] = TrustedKey(
                    key_id=kid,
                    fingerprint=body["fingerprint"],
                    suite=body["suite"],
                    pem=body["public_key_pem"],
                    created_us=int(body["created_us"]),
                    seq=int(body["seq"]),
                )
            elif not (rooted and valid_prefix):
                out.untrusted[kid] = why if not rooted else "a record before it in the key log does not verify"
                if pinned_fps and body["fingerprint"] in pinned_fps and ok:
                    # A pinned key is trusted on its own even where the chain to it is broken.
                    out.keys[kid] = TrustedKey(
                        kid, body["fingerprint"], body["suite"], body["public_key_pem"], int(body["created_us"]), 0
                    )
                    out.untrusted.pop(kid, None)
    return out


def load(keys_dir: Path, pinned_fps: list[str] | tuple[str, ...] = ()) -> PinnedKeys:
    """The trusted keys: the key log in ``keys_dir`` checked from its root (see :func:`verify_records`)."""
    try:
        records = read_lines(keys_dir)
    except NvrError as exc:
        return PinnedKeys(problems=[exc.message])
    return verify_records(records, frozenset(pinned_fps))
