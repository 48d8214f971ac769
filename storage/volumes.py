"""Archive volumes and their identity.

A volume is a folder holding an identity file that names the volume and the database it belongs to. The recorder
writes only into folders whose identity matches this database: an unmounted disk leaves an empty mount point
behind, and recording into it would silently fill the root file system and scatter evidence.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from nvr.errors import Kind, NvrError
from nvr.models import Segment, Volume

IDENTITY_FILE = ".nvr-volume.json"
IDENTITY_FORMAT = "nvr-volume/1"


@dataclass(frozen=True)
class VolumeInfo:
    id: str
    path: Path
    encrypted: bool = False
    """New segments on this volume are encrypted at rest (its row or its identity file says so: either is enough,
    so neither a database edit nor a swapped identity file turns encryption off)."""


ENCRYPTION_ON = "on"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_identity(path: Path) -> dict | None:
    try:
        return json.loads((path / IDENTITY_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise NvrError(
            Kind.UNAVAILABLE, "volume_identity_unreadable", f"volume {path}: identity file unreadable ({exc})"
        ) from None


def _write_identity(path: Path, body: dict) -> None:
    tmp = path / (IDENTITY_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(body, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path / IDENTITY_FILE)
    fsync_dir(path)


def mark_encrypted(session: Session, info: VolumeInfo) -> VolumeInfo:
    """Encrypt this volume's new segments from now on, for good (identity file first, then the row): there is no
    way back short of editing both, and ``nvr verify`` still sees each segment's own ``encryption``."""
    identity = read_identity(info.path)
    if identity is None:
        raise NvrError(Kind.UNAVAILABLE, "volume_identity_missing", f"volume {info.path} has no identity file")
    if identity.get("encryption") != ENCRYPTION_ON:
        _write_identity(info.path, {**identity, "encryption": ENCRYPTION_ON})
    row = session.get(Volume, info.id)
    if row is not None and row.encryption != ENCRYPTION_ON:
        row.encryption = ENCRYPTION_ON
        session.flush()
    return VolumeInfo(info.id, info.path, True)


def init_volume(session: Session, path: Path, database_id: str, now_us: int, encrypt: bool = False) -> VolumeInfo:
    """Make ``path`` a volume of this database. Refuses a folder that holds anything, or another's identity.
    ``encrypt`` makes it an encrypted volume (``mark_encrypted``), also when it already was a volume."""
    info = _init_volume(session, path, database_id, now_us)
    return mark_encrypted(session, info) if encrypt else info


def _init_volume(session: Session, path: Path, database_id: str, now_us: int) -> VolumeInfo:
    path = path.expanduser().absolute()
    identity = read_identity(path) if path.exists() else None
    if identity is not None:
        if identity.get("database_id") != database_id:
            raise NvrError(
                Kind.CONFLICT,
                "volume_identity_foreign",
                f"volume {path} belongs to another database ({identity.get('database_id')}); refusing to adopt it",
            )
        row = session.get(Volume, identity.get("volume_id"))
        if row is None:
            row = Volume(
                id=identity["volume_id"], path=str(path), created_us=now_us, encryption=identity.get("encryption")
            )
            session.add(row)
            session.flush()
        return VolumeInfo(row.id, path, _encrypted(row, identity))
    if path.exists() and any(path.iterdir()):
        raise NvrError(
            Kind.FAILED_PRECONDITION,
            "volume_not_empty",
            f"{path} is not empty and has no volume identity; choose an empty folder",
        )
    path.mkdir(parents=True, exist_ok=True)
    if session.scalar(select(Volume).where(Volume.path == str(path))) is not None:
        raise NvrError(
            Kind.UNAVAILABLE,
            "volume_identity_missing",
            f"volume {path} is registered but its identity file is gone (unmounted disk?); not re-initialising",
        )
    volume_id = str(uuid.uuid4())
    body = {"format": IDENTITY_FORMAT, "volume_id": volume_id, "database_id": database_id, "created_us": now_us}
    _write_identity(path, body)
    session.add(Volume(id=volume_id, path=str(path), created_us=now_us))
    session.flush()
    return VolumeInfo(volume_id, path)


def check_volume(path: Path, database_id: str, volume_id: str | None = None) -> None:
    """Raise unless ``path`` carries this database's identity (and, if given, this volume's id)."""
    identity = read_identity(path) if path.is_dir() else None
    if identity is None:
        raise NvrError(
            Kind.UNAVAILABLE,
            "volume_identity_missing",
            f"volume {path} has no identity file {IDENTITY_FILE} (not mounted, or never initialised with "
            f"'nvr volume init {path}'); refusing to write there",
        )
    if identity.get("format") != IDENTITY_FORMAT or identity.get("database_id") != database_id:
        raise NvrError(
            Kind.UNAVAILABLE,
            "volume_identity_foreign",
            f"volume {path} belongs to database {identity.get('database_id')}, not this one ({database_id}); "
            "refusing to write there",
        )
    if volume_id is not None and identity.get("volume_id") != volume_id:
        raise NvrError(
            Kind.UNAVAILABLE,
            "volume_identity_foreign",
            f"volume {path} carries volume id {identity.get('volume_id')}, expected {volume_id}",
        )


def configured_volumes(session: Session, paths: list[Path]) -> list[VolumeInfo]:
    """The configured folders that are registered volumes of this database, in configuration order."""
    out = []
    for p in paths:
        row = session.scalar(select(Volume).where(Volume.path == str(p)))
        if row is None:
            raise NvrError(
                Kind.UNAVAILABLE,
                "volume_not_registered",
                f"configured volume {p} is not a volume of this database; run 'nvr volume init {p}'",
            )
        try:
            identity = read_identity(Path(row.path))
        except NvrError:
            identity = None  # pick_volume's identity check says why it cannot be written to
        out.append(VolumeInfo(row.id, Path(row.path), _encrypted(row, identity)))
    return out


def _encrypted(row: Volume, identity: dict | None) -> bool:
    return row.encryption is not None or (identity or {}).get("encryption") == ENCRYPTION_ON


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def bytes_per_camera(session: Session, volume_id: str | None = None) -> dict[str, int]:
    q = select(Segment.camera_id, func.sum(Segment.bytes)).group_by(Segment.camera_id)
    if volume_id is not None:
        q = q.where(Segment.volume_id == volume_id)
    return {cam: int(total or 0) for cam, total in session.execute(q)}
