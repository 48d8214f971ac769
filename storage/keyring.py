"""Master keys and wrapped data keys for encryption at rest.

Each encrypted segment has its own random data key (storage.crypt). The data key is kept only *wrapped*: sealed
with a master key (AES-256-GCM or SM4-GCM, the segment's own cipher) in a small sidecar file beside the segment,
``<segment>.key``, written and fsynced before the first encrypted byte exists. The sidecar is not part of the
segment's hash, so re-wrapping every data key under a new master key (rotation) rewrites sidecars only, never
footage, and the chain is untouched.

Master keys live outside the database, in ``<data_dir>/master-keys/`` (mode 0700), one file per key
(``<key_id>.key``, mode 0600, 32 random bytes as hex). A key's id is derived from the key (the first 16 hex
digits of H("nvr/master-key-id" ‖ key)), so a file renamed or swapped is noticed. Whoever can read that folder can
decrypt the footage; whoever deletes every copy of a master key has destroyed every segment wrapped only under it
(docs/integrity/encryption.md says what to back up, and where).

A sidecar (JSON, one line)::

    {"v": 1, "cipher": "aes-256-gcm", "segment": "<volume id>/<rel_path>",
     "wraps": [{"master_key_id": "…", "nonce": "<hex>", "wrapped": "<hex>"}]}

Each wrap's associated data is ``"nvr/data-key/v1/" + cipher + "/" + segment``: a sidecar moved to another segment
does not unwrap.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from integrity import audit_log, suites
from nvr.errors import Kind, NvrError
from nvr.models import Segment

DIR_MODE = 0o700
KEY_MODE = 0o600
SIDECAR_SUFFIX = ".key"
MASTER_KEY_BYTES = 32


class KeyringError(NvrError):
    pass


def master_key_id(key: bytes) -> str:
    return suites.digest("sha256", b"nvr/master-key-id" + key)[:16]


@dataclass(frozen=True)
class MasterKey:
    key_id: str
    key: bytes

    def __repr__(self) -> str:  # never print the key
        return f"MasterKey({self.key_id})"

    def for_cipher(self, cipher: str) -> bytes:
        """The master key as a key of ``cipher`` (SM4 takes 16 bytes: a derived subkey, not a prefix)."""
        if suites.KEY_BYTES[suites.check_cipher(cipher)] == len(self.key):
            return self.key
        return bytes.fromhex(suites.digest("sm3", b"nvr/master-key/sm4/" + self.key))[: suites.KEY_BYTES[cipher]]


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_MODE)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class Keyring:
    """The master keys in a folder: the newest created is the one new data keys are wrapped with."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def create(self) -> MasterKey:
        self.folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(self.folder, DIR_MODE)
        key = secrets.token_bytes(MASTER_KEY_BYTES)
        mk = MasterKey(master_key_id(key), key)
        _write_private(self.folder / f"{mk.key_id}.key", key.hex().encode() + b"\n")
        return mk

    @property
    def retired_folder(self) -> Path:
        """Master keys retired by ``nvr keys master rotate --retire-old``: never used for new wraps and no sidecar
        wraps under them any more, kept (so a segment that was being opened during the rotation still opens) until
        an operator deletes them."""
        return self.folder / "retired"

    def master_keys(self) -> list[MasterKey]:
        """Every readable master key, oldest first (by file time); a damaged or mis-named file is an error."""
        return self._read(self.folder)

    def retired_keys(self) -> list[MasterKey]:
        return self._read(self.retired_folder)

    def retire(self, key_id: str) -> None:
        """Move a master key out of the active set into :attr:`retired_folder`, durably."""
        self.retired_folder.mkdir(mode=DIR_MODE, exist_ok=True)
        os.rename(self.folder / f"{key_id}.key", self.retired_folder / f"{key_id}.key")
        for d in (self.retired_folder, self.folder):
            dfd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def _read(self, folder: Path) -> list[MasterKey]:
        if not folder.is_dir():
            return []
        found: list[tuple[float, MasterKey]] = []
        for path in folder.glob("*.key"):
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                raise KeyringError(
                    Kind.FAILED_PRECONDITION,
                    "master_key_exposed",
                    f"master key file {path} is readable by others (mode {mode:04o}); chmod 600 it",
                )
            try:
                key = bytes.fromhex(path.read_text(encoding="ascii").strip())
            except (ValueError, UnicodeDecodeError):
                raise KeyringError(Kind.DATA_LOSS, "master_key_invalid", f"{path} is not a master key file") from None
            if len(key) != MASTER_KEY_BYTES or master_key_id(key) != path.stem:
                raise KeyringError(
                    Kind.DATA_LOSS, "master_key_invalid", f"{path} does not hold the key its name says ({path.stem})"
                )
            found.append((path.stat().st_mtime, MasterKey(path.stem, key)))
        return [mk for _t, mk in sorted(found, key=lambda f: (f[0], f[1].key_id))]

    def active(self) -> MasterKey:
        keys = self.master_keys()
        if not keys:
            raise KeyringError(
                Kind.UNAVAILABLE,
                "master_key_missing",
                f"no master key in {self.folder}: encrypted footage can be neither written nor read",
            )
        return keys[-1]

    def get(self, key_id: str) -> MasterKey | None:
        return next((k for k in (*self.master_keys(), *self.retired_keys()) if k.key_id == key_id), None)


def _aad(cipher: str, segment: str) -> bytes:
    return f"nvr/data-key/v1/{cipher}/{segment}".encode()


def wrap(master: MasterKey, cipher: str, segment: str, data_key: bytes) -> dict[str, str]:
    nonce = os.urandom(suites.NONCE_BYTES)
    sealed = suites.seal(cipher, master.for_cipher(cipher), nonce, data_key, _aad(cipher, segment))
    return {"master_key_id": master.key_id, "nonce": nonce.hex(), "wrapped": sealed.hex()}


def write_sidecar(path: Path, cipher: str, segment: str, wraps: list[dict[str, str]]) -> None:
    body = {"v": 1, "cipher": cipher, "segment": segment, "wraps": wraps}
    _write_private(path, json.dumps(body, sort_keys=True, separators=(",", ":")).encode() + b"\n")


def read_sidecar(path: Path) -> dict[str, object]:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeyringError(
            Kind.DATA_LOSS, "data_key_missing", f"{path}: the segment's wrapped key is missing"
        ) from None
    except (ValueError, UnicodeDecodeError):
        raise KeyringError(Kind.DATA_LOSS, "data_key_invalid", f"{path} is not a wrapped-key file") from None
    if not isinstance(body, dict) or body.get("v") != 1 or not isinstance(body.get("wraps"), list):
        raise KeyringError(Kind.DATA_LOSS, "data_key_invalid", f"{path} is not a wrapped-key file (version 1)")
    return body


def unwrap(ring: Keyring, sidecar: Path, segment: str) -> tuple[str, bytes]:
    """(cipher, data key) of a segment, with whichever of its wraps a master key in ``ring`` opens."""
    body = read_sidecar(sidecar)
    cipher = suites.check_cipher(str(body.get("cipher")))
    if body.get("segment") != segment:
        raise KeyringError(
            Kind.DATA_LOSS, "data_key_invalid", f"{sidecar} belongs to {body.get('segment')!r}, not {segment!r}"
        )
    wanted = []
    for w in body["wraps"]:  # type: ignore[attr-defined]
        mk = ring.get(str(w.get("master_key_id")))
        wanted.append(str(w.get("master_key_id")))
        if mk is None:
            continue
        key = suites.open_sealed(
            cipher,
            mk.for_cipher(cipher),
            bytes.fromhex(w["nonce"]),
            bytes.fromhex(w["wrapped"]),
            _aad(cipher, segment),
            what=f"{sidecar.name} (wrapped under master key {mk.key_id})",
        )
        return cipher, key
    raise KeyringError(
        Kind.UNAVAILABLE,
        "master_key_missing",
        f"{sidecar}: none of its master keys ({', '.join(wanted) or 'none'}) is in {ring.folder}",
    )


def rewrap(ring: Keyring, sidecar: Path, segment: str, new: MasterKey) -> bool:
    """Wrap the segment's data key under ``new`` too, and drop wraps under keys no longer in the keyring. Returns
    False when it already was. Footage is not touched; the sidecar is replaced atomically."""
    body = read_sidecar(sidecar)
    if any(w.get("master_key_id") == new.key_id for w in body["wraps"]):  # type: ignore[attr-defined]
        return False
    cipher, data_key = unwrap(ring, sidecar, segment)
    present = {k.key_id for k in ring.master_keys()}
    kept = [w for w in body["wraps"] if w.get("master_key_id") in present]  # type: ignore[attr-defined]
    write_sidecar(sidecar, cipher, segment, [*kept, wrap(new, cipher, segment, data_key)])
    return True


def ensure_master_key(session: Session, ring: Keyring, now_us: int) -> MasterKey:
    """The active master key, made on first use: only while no segment is encrypted yet, so a master-key folder
    that went missing (a volume not mounted, a deleted file) is an alarm, never silently replaced by a new key that
    opens none of the existing footage. The creation is an audit event in the caller's transaction."""
    keys = ring.master_keys()
    if keys:
        return keys[-1]
    if session.scalar(select(Segment.id).where(Segment.encryption.is_not(None)).limit(1)) is not None:
        raise KeyringError(
            Kind.UNAVAILABLE,
            "master_key_missing",
            f"no master key in {ring.folder}, yet encrypted segments exist: restore the master-key folder from its "
            "backup (a new key would open none of them)",
        )
    mk = ring.create()
    audit_log.record(
        session,
        now_us,
        audit_log.SYSTEM,
        audit_log.INTERNAL,
        audit_log.Event("keys.master_created", "ok", reason=f"master key {mk.key_id} in {ring.folder}"),
    )
    return mk


def create_master_key(session: Session, ring: Keyring, now_us: int, actor: audit_log.Actor | None = None) -> MasterKey:
    """A new master key, active from now on for newly wrapped data keys (``nvr keys master rotate``); audited."""
    mk = ring.create()
    audit_log.record(
        session,
        now_us,
        actor or audit_log.SYSTEM,
        audit_log.INTERNAL,
        audit_log.Event("keys.master_created", "ok", reason=f"master key {mk.key_id} in {ring.folder}"),
    )
    return mk


@dataclass(frozen=True)
class MasterRotation:
    new: MasterKey
    rewrapped: int
    already: int
    retired: list[str]
    problems: list[str]


def rotate_master(
    session: Session, ring: Keyring, volumes: dict[str, Path], now_us: int, actor: audit_log.Actor, retire_old: bool
) -> MasterRotation:
    """``nvr keys master rotate``: make a new master key and wrap every encrypted segment's data key under it too;
    footage and chain are not touched (the sidecars are outside the hash). With ``retire_old`` and every sidecar
    re-wrapped, the older wraps go and the older key files move to :attr:`Keyring.retired_folder`: whoever kept a
    copy of an old key can no longer open these sidecars with it. A sidecar that cannot be re-wrapped is listed and
    stops the retirement."""
    new = ring.create()
    rewrapped = already = 0
    problems: list[str] = []
    rows = session.execute(
        select(Segment.volume_id, Segment.rel_path).where(Segment.encryption.is_not(None)).order_by(Segment.id)
    ).all()
    for volume_id, rel_path in rows:
        root = volumes.get(volume_id)
        if root is None:
            problems.append(f"{volume_id}/{rel_path}: its volume is not known")
            continue
        sidecar = root / (rel_path + SIDECAR_SUFFIX)
        try:
            if rewrap(ring, sidecar, f"{volume_id}/{rel_path}", new):
                rewrapped += 1
            else:
                already += 1
        except (NvrError, OSError) as exc:
            problems.append(f"{sidecar}: {getattr(exc, 'message', exc)}")
    retired: list[str] = []
    if retire_old and not problems:
        old = [k for k in ring.master_keys() if k.key_id != new.key_id]
        for volume_id, rel_path in rows:
            sidecar = volumes[volume_id] / (rel_path + SIDECAR_SUFFIX)
            body = read_sidecar(sidecar)
            kept = [w for w in body["wraps"] if w.get("master_key_id") == new.key_id]  # type: ignore[attr-defined]
            if kept != body["wraps"]:
                write_sidecar(sidecar, str(body["cipher"]), str(body["segment"]), kept)
        # Moved aside, not deleted: a segment the recorder opened just before the new key existed (its row not yet
        # there) is wrapped under an old key only, and must still open; the next rotation re-wraps it.
        for k in old:
            ring.retire(k.key_id)
            retired.append(k.key_id)
    audit_log.record(
        session,
        now_us,
        actor,
        audit_log.INTERNAL,
        audit_log.Event(
            "keys.master_rotated",
            "ok" if not problems else "failed",
            reason=f"new master key {new.key_id}; re-wrapped {rewrapped}, already {already}, problems {len(problems)}"
            + (f"; retired {', '.join(retired)}" if retired else ""),
        ),
    )
    return MasterRotation(new, rewrapped, already, retired, problems)
