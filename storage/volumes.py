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


def init_volume(session: Session, path: Path, database_id: str, now_us: int) -> VolumeInfo:
    """Make ``path`` a volume of this database. Refuses a folder that holds anything, or another's identity."""
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
            row = Volume(id=identity["volume_id"], path=str(path), created_us=now_us)
            session.add(row)
            session.flush()
        return VolumeInfo(row.id, path)
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
    tmp = path / (IDENTITY_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(body, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path / IDENTITY_FILE)
    fsync_dir(path)
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
        out.append(VolumeInfo(row.id, Path(row.path)))
    return out


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def bytes_per_camera(session: Session, volume_id: str | None = None) -> dict[str, int]:
    q = select(Segment.camera_id, func.sum(Segment.bytes)).group_by(Segment.camera_id)
    if volume_id is not None:
        q = q.where(Segment.volume_id == volume_id)
    return {cam: int(total or 0) for cam, total in session.execute(q)}
