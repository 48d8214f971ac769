"""The server's signing keys: private halves in files only the service can read, public halves in the database.

Layout (``settings.keys_dir``, i.e. ``<data_dir>/keys``, mode 0700)::

    <key_id>.key       PKCS#8 PEM private key, mode 0600 — only while the key is active
    <key_id>.pub.pem   SubjectPublicKeyInfo PEM public key, mode 0644 — kept for every key ever used

and one :class:`~nvr.models.SigningKey` row per key ever used (``retired_us`` None for the active one), so every
checkpoint and bundle the server ever signed still verifies after a rotation.

Design choices:

- A key file is written to an ``O_EXCL`` temporary file in the same folder, fsynced, renamed into place and the
  folder fsynced, *before* its row is inserted: a crash leaves at worst an unused file, never a row whose private
  key does not exist. The private key is never logged, printed or returned by anything here.
- Creating and rotating first take a database lock (a PostgreSQL advisory transaction lock; SQLite's write lock),
  so two processes starting at once cannot both create "the" active key.
- Rotation retires the old row and makes a new active key; the old *private* file is then deleted by
  :func:`purge_retired` once the rotation has committed (the CLI calls it; the checkpoint scheduler does at start,
  which also cleans up after a crash). Nothing may sign with a retired key, and a private key that no longer exists
  cannot leak and be used to forge back-dated signatures; its public key stays (row and ``.pub.pem``) for verifying.
- Each creation and rotation writes one audit event (``keys.create``, ``keys.rotate``) in the same transaction.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from pathlib import Path

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from integrity import audit_log, keylog, signing
from integrity.signing import DEFAULT_SUITE
from nvr.config import Settings
from nvr.errors import Kind, NvrError
from nvr.models import SigningKey

log = logging.getLogger(__name__)

DIR_MODE = 0o700
PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
_LOCK_KEY = 0x6E7672_0005
"""PostgreSQL advisory lock taken while the active key is created or replaced."""


def private_path(keys_dir: Path, key_id: str) -> Path:
    return keys_dir / f"{key_id}.key"


def public_path(keys_dir: Path, key_id: str) -> Path:
    return keys_dir / f"{key_id}.pub.pem"


# --- reading ---------------------------------------------------------------------------------------------------
def active_key(session: Session) -> SigningKey | None:
    """The key in use (the newest one not retired), or None before the first key is made."""
    return session.scalar(
        select(SigningKey)
        .where(SigningKey.retired_us.is_(None))
        .order_by(SigningKey.created_us.desc(), SigningKey.key_id)
        .limit(1)
    )


def active_suite(session: Session) -> str:
    """The crypto suite of the active signing key, or the default suite before the first key is made (the query
    lives in integrity.audit_log, which hashes events with it and cannot import this module)."""
    return audit_log.active_suite(session)


def public_keys(session: Session) -> list[SigningKey]:
    """Every key the server has used, oldest first."""
    return list(session.scalars(select(SigningKey).order_by(SigningKey.created_us, SigningKey.key_id)))


def public_key_map(session: Session) -> dict[str, SigningKey]:
    return {k.key_id: k for k in public_keys(session)}


def pinned(session: Session, settings: Settings) -> keylog.PinnedKeys:
    """The key log checked from its root, plus keys whose fingerprint ``trusted_key_fingerprints`` names (their
    public key may come from the database: the fingerprint, given out of band, is what pins it)."""
    out = keylog.load(settings.keys_dir, settings.trusted_key_fingerprints)
    wanted = set(settings.trusted_key_fingerprints) - {k.fingerprint for k in out.keys.values()}
    if wanted:
        for row in public_keys(session):
            with contextlib.suppress(NvrError):
                info = signing.public_key_info(row.suite, row.public_key_pem)
                if info.fingerprint in wanted:
                    out.keys[info.key_id] = keylog.TrustedKey(
                        info.key_id, info.fingerprint, row.suite, info.pem, int(row.created_us), 0
                    )
                    out.untrusted.pop(info.key_id, None)
    return out


def trusted_keys(session: Session, settings: Settings) -> dict[str, keylog.TrustedKey]:
    """The keys checkpoints and bundles may be signed by, by key id: those pinned outside the database."""
    return pinned(session, settings).keys


def get_key(session: Session, key_id: str) -> SigningKey:
    """A key by its id or (as people copy it) its full fingerprint; ``key_unknown`` (NOT_FOUND) otherwise."""
    wanted = key_id.strip().lower()
    row = session.get(SigningKey, wanted)
    if row is None and len(wanted) >= 64:
        with contextlib.suppress(NvrError):
            fp = signing.normalise_fingerprint(wanted)
            row = session.scalar(select(SigningKey).where(SigningKey.fingerprint == fp))
    if row is None:
        known = ", ".join(k.key_id for k in public_keys(session)) or "none yet"
        raise NvrError(Kind.NOT_FOUND, "key_unknown", f"no signing key {key_id!r} (known key ids: {known})")
    return row


def active_signer(session: Session, keys_dir: Path) -> signing.Signer:
    """Load the active key's private half. ``signing_key_missing`` when there is none or its file is gone."""
    row = active_key(session)
    if row is None:
        raise NvrError(
            Kind.FAILED_PRECONDITION,
            "signing_key_missing",
            "this server has no signing key yet: run 'nvr init' (or 'nvr keys rotate') to create one",
        )
    return _load(row, keys_dir)


def _load(row: SigningKey, keys_dir: Path) -> signing.Signer:
    path = private_path(keys_dir, row.key_id)
    remedy = (
        "restore the file from the backup of the keys folder (owner: the service user, mode 0600), or run "
        "'nvr keys rotate' to retire this key and make a new one (what it signed still verifies with its public key)"
    )
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise NvrError(
            Kind.FAILED_PRECONDITION,
            "signing_key_missing",
            f"the active signing key {row.key_id} has no private key file at {path}: {remedy}",
        ) from None
    except OSError as exc:
        raise NvrError(
            Kind.FAILED_PRECONDITION,
            "signing_key_missing",
            f"the private key file of the active signing key {row.key_id} at {path} cannot be read "
            f"({exc.strerror}): {remedy}",
        ) from None
    signer = signing.load_signer(row.suite, pem)
    if signer.public.fingerprint != row.fingerprint:
        raise NvrError(
            Kind.DATA_LOSS,
            "signing_key_mismatch",
            f"the private key file {path} does not belong to signing key {row.key_id} "
            f"(its fingerprint is {signer.public.fingerprint}, the database says {row.fingerprint}): {remedy}",
        )
    return signer


# --- creating and rotating -------------------------------------------------------------------------------------
def ensure_key(
    session: Session,
    keys_dir: Path,
    now_us: int,
    suite: str = DEFAULT_SUITE,
    *,
    actor: audit_log.Actor = audit_log.SYSTEM,
    meta: audit_log.RequestMeta = audit_log.INTERNAL,
) -> SigningKey:
    """The active key, created (with a ``keys.create`` audit event) when there is none. An existing active key
    must have its private file: ``signing_key_missing`` otherwise. Call it first in its transaction (it locks)."""
    row = active_key(session)
    if row is None:
        _lock(session)
        row = active_key(session)  # another process may have made it while this one waited
    if row is not None:
        _load(row, keys_dir)
        ensure_log(session, keys_dir)
        return row
    row = _create(session, keys_dir, now_us, suite)
    audit_log.record(
        session,
        now_us,
        actor,
        meta,
        audit_log.Event(
            action="keys.create",
            outcome="ok",
            object_id=row.key_id,
            reason=f"first signing key; suite {row.suite}; fingerprint {row.fingerprint}",
        ),
    )
    log.info("created signing key %s (fingerprint %s)", row.key_id, row.fingerprint)
    return row


def rotate(
    session: Session,
    keys_dir: Path,
    now_us: int,
    suite: str | None = None,
    *,
    actor: audit_log.Actor = audit_log.SYSTEM,
    meta: audit_log.RequestMeta = audit_log.INTERNAL,
) -> tuple[SigningKey, SigningKey]:
    """Retire the active key and make a new one (same suite unless given); returns (retired, new). Works when the
    active key's private file is lost, which is what rotation is for then. Call :func:`purge_retired` after the
    transaction commits to delete the retired private file."""
    _lock(session)
    old = active_key(session)
    if old is None:
        raise NvrError(
            Kind.FAILED_PRECONDITION, "no_signing_key", "there is no signing key to rotate yet: run 'nvr init'"
        )
    previous: signing.Signer | None = None
    with contextlib.suppress(NvrError):  # a lost private key makes the new key a reroot, pinned only by settings
        previous = _load(old, keys_dir)
        ensure_log(session, keys_dir)
    new = _create(session, keys_dir, now_us, suite or old.suite, previous)
    session.execute(
        update(SigningKey)
        .where(SigningKey.retired_us.is_(None), SigningKey.key_id != new.key_id)
        .values(retired_us=now_us)
    )
    session.refresh(old)
    audit_log.record(
        session,
        now_us,
        actor,
        meta,
        audit_log.Event(
            action="keys.rotate",
            outcome="ok",
            object_id=new.key_id,
            reason=f"retired {old.key_id} (fingerprint {old.fingerprint}); new key suite {new.suite}, "
            f"fingerprint {new.fingerprint}",
        ),
    )
    log.info("rotated signing key: %s retired, %s (fingerprint %s) active", old.key_id, new.key_id, new.fingerprint)
    return old, new


def ensure_log(session: Session, keys_dir: Path) -> bool:
    """Start the pinned key log of a server made before it existed: the active key (its private file must be
    there) as genesis, then every older public key file in the keys folder vouched for by it. Returns True if it
    wrote the log. The folder, not the database, says which keys were ours: rows without a file are not pinned."""
    with keylog.locked(keys_dir):
        if keylog.read_lines(keys_dir):
            return False
        row = active_key(session)
        if row is None:
            return False
        return _start_log(session, keys_dir, row)


def _start_log(session: Session, keys_dir: Path, row: SigningKey) -> bool:
    active = _load(row, keys_dir)
    keylog.append_key(keys_dir, active, int(row.created_us), action="genesis")
    created = {k.key_id: int(k.created_us) for k in public_keys(session)}
    for pub in sorted(keys_dir.glob("*.pub.pem")):
        kid = pub.name.removesuffix(".pub.pem")
        if kid == active.key_id:
            continue
        try:
            info = _public_file_info(pub, row.suite)
        except (OSError, NvrError) as exc:
            log.warning("key log: not pinning %s: %s", pub, exc)
            continue
        keylog.import_key(keys_dir, info, created.get(info.key_id, 0), active)
    _fsync_dir(keys_dir)
    log.info("started the pinned key log %s with key %s", keylog.path(keys_dir), active.key_id)
    return True


def _public_file_info(pub: Path, first_suite: str) -> signing.PublicKey:
    """An older public key file, of the active key's suite or (after a suite switch) another one."""
    data = pub.read_bytes()
    error: NvrError | None = None
    for suite in (first_suite, *(x for x in signing.SUITES if x != first_suite)):
        try:
            return signing.public_key_info(suite, data)
        except NvrError as exc:
            error = error or exc
    assert error is not None
    raise error


def purge_retired(session: Session, keys_dir: Path) -> list[str]:
    """Delete the private files of retired keys (call after the rotation committed); returns their key ids.
    Public files and rows stay."""
    removed: list[str] = []
    retired = session.scalars(select(SigningKey.key_id).where(SigningKey.retired_us.is_not(None)))
    for key_id in retired:
        path = private_path(keys_dir, key_id)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(key_id)
    if removed:
        _fsync_dir(keys_dir)
        log.info("deleted the private key file(s) of retired signing key(s) %s", ", ".join(removed))
    return removed


def _create(
    session: Session, keys_dir: Path, now_us: int, suite: str, previous: signing.Signer | None = None
) -> SigningKey:
    """A new key: private and public files, then its record in the pinned key log (genesis for the first key,
    countersigned by ``previous`` on a rotation, a reroot when the previous private key is lost), then its row."""
    private_pem, signer = signing.generate(suite)
    info = signer.public
    _ensure_dir(keys_dir)
    _write_new(private_path(keys_dir, info.key_id), private_pem, PRIVATE_MODE)
    _write_new(public_path(keys_dir, info.key_id), info.pem.encode("ascii"), PUBLIC_MODE, replace=True)
    keylog.append_key(keys_dir, signer, now_us, previous)
    _fsync_dir(keys_dir)
    row = SigningKey(
        key_id=info.key_id,
        suite=suite,
        public_key_pem=info.pem,
        fingerprint=info.fingerprint,
        created_us=now_us,
        retired_us=None,
    )
    session.add(row)
    session.flush()
    audit_log.forget_suite(session)  # the events after this one are hashed with the new key's suite
    return row


def _lock(session: Session) -> None:
    """Serialise key creation and rotation across processes until the transaction ends."""
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    else:
        # SQLite: a write statement (even one touching no row) takes the database's write lock until commit.
        conn.execute(update(SigningKey).where(SigningKey.key_id.is_(None)).values(retired_us=None))


# --- files -----------------------------------------------------------------------------------------------------
def _ensure_dir(keys_dir: Path) -> None:
    keys_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    mode = stat.S_IMODE(keys_dir.stat().st_mode)
    if mode != DIR_MODE:
        log.warning("keys folder %s had mode %o; setting it to %o", keys_dir, mode, DIR_MODE)
        keys_dir.chmod(DIR_MODE)


def _write_new(path: Path, data: bytes, mode: int, replace: bool = False) -> None:
    """Write ``data`` to a fresh temporary file (O_EXCL, ``mode`` from the start), fsync, rename onto ``path``."""
    if path.exists() and not replace:
        raise NvrError(Kind.CONFLICT, "key_file_exists", f"refusing to overwrite the key file {path}")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed the public file's mode
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
