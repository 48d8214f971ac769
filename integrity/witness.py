"""Witness copies of the signed checkpoint chain, kept where a database writer does not reach.

Every checkpoint the server signs is appended, once its transaction has committed, to

- ``<data_dir>/keys/checkpoints.witness.jsonl`` (always): one compact line per checkpoint, ``{"seq", "id",
  "created_us", "key_id", "hash", "prev_hash"}``: enough to notice a checkpoint removed, replaced or re-signed;
- ``checkpoint_witness_path`` (optional, best on another volume or host): the full entry, body and signature
  included, so the chain can be re-checked from the file alone.

``nvr checkpoints export`` and ``GET /api/v1/checkpoints`` hand out the full entries (plus the pinned key log),
and ``nvr verify --against FILE`` checks the archive against such a copy kept by an auditor: even a rewrite signed
with the server's own key file differs from a copy taken before it.

Appending happens after the commit, so a crash in between leaves the witness one checkpoint behind, never ahead
of the database; :func:`catch_up` appends what is missing, but only checkpoints that verify with a pinned key and
continue the chain, so a row forged into the database is never copied into a witness.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from integrity import checkpoints, keys
from nvr.config import Settings
from nvr.db import Database
from nvr.models import Checkpoint

log = logging.getLogger(__name__)

LOCAL_FILE = "checkpoints.witness.jsonl"
COMPACT = ("seq", "id", "created_us", "key_id", "hash", "prev_hash")


def local_path(settings: Settings) -> Path:
    return settings.keys_dir / LOCAL_FILE


def paths(settings: Settings) -> list[tuple[Path, bool]]:
    """Every configured witness as (path, full?)."""
    out = [(local_path(settings), False)]
    if settings.checkpoint_witness_path is not None:
        out.append((Path(settings.checkpoint_witness_path).expanduser().absolute(), True))
    return out


def entry(row: Checkpoint, full: bool = True) -> dict[str, Any]:
    e: dict[str, Any] = {
        "seq": row.seq,
        "id": row.id,
        "created_us": row.created_us,
        "key_id": row.key_id,
        "hash": checkpoints.checkpoint_hash(row),
        "prev_hash": row.prev_hash,
    }
    if full:
        e.update(suite=row.suite, body=row.body, signature=row.signature)
    return e


def read(path: Path) -> list[dict[str, Any]]:
    """The checkpoint entries of a witness file or an exported copy: JSON lines (``{"checkpoint": {...}}`` or a
    bare entry; key-log lines are skipped) or the JSON document ``GET /api/v1/checkpoints`` answers. A torn last
    line (a crash while appending) is ignored. Raises OSError / ValueError for what cannot be read at all."""
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("{") and '"checkpoints"' in stripped[:200]:
        with_doc = json.loads(text)
        if isinstance(with_doc, dict) and isinstance(with_doc.get("checkpoints"), list):
            return [e for e in with_doc["checkpoints"] if _is_entry(e)]
    out = []
    lines = text.splitlines()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            if n == len(lines):
                break
            raise ValueError(f"{path}: line {n} is not JSON") from None
        obj = obj.get("checkpoint", obj) if isinstance(obj, dict) else obj
        if _is_entry(obj):
            out.append(obj)
    return out


def read_key_log(path: Path) -> list[dict[str, Any]]:
    """The key-log records an exported copy carries (``{"key_record": {...}}`` lines or ``key_log`` in JSON)."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("{") and '"checkpoints"' in text.lstrip()[:200]:
        doc = json.loads(text)
        return list(doc.get("key_log") or []) if isinstance(doc, dict) else []
    out = []
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("key_record"), dict):
            out.append(obj["key_record"])
    return out


def _is_entry(e: object) -> bool:
    return isinstance(e, dict) and isinstance(e.get("seq"), int) and isinstance(e.get("hash"), str)


def newest(path: Path) -> dict[str, Any] | None:
    """The last complete entry of a witness file, read from its end (None when there is none or it cannot be
    read): the file grows for ever, the newest line is all a new checkpoint needs."""
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            pos, tail = end, b""
            while pos > 0:
                step = min(1 << 16, pos)
                pos -= step
                f.seek(pos)
                tail = f.read(step) + tail
                lines = [ln for ln in tail.split(b"\n") if ln.strip()]
                # Everything but the first piece is a whole line once an earlier newline was seen (or at offset 0).
                complete = lines if pos == 0 else lines[1:]
                for raw in reversed(complete):
                    try:
                        obj = json.loads(raw)
                    except ValueError:
                        continue  # a torn last line
                    obj = obj.get("checkpoint", obj) if isinstance(obj, dict) else obj
                    if _is_entry(obj):
                        return dict(obj)
    except OSError:
        return None
    return None


def continue_from(settings: Settings) -> tuple[int, str] | None:
    """(seq, hash) of the newest checkpoint any witness holds: a new checkpoint never re-uses its number."""
    best: tuple[int, str] | None = None
    for p, _full in paths(settings):
        e = newest(p)
        if e is not None and (best is None or int(e["seq"]) > best[0]):
            best = (int(e["seq"]), str(e["hash"]))
    return best


def catch_up(db: Database, settings: Settings) -> int:
    """Append to every witness the committed checkpoints it lacks, in order, while they verify with a pinned key
    and continue the chain; returns how many lines were written."""
    written = 0
    with db.session() as s:
        trusted = keys.trusted_keys(s, settings)
        for p, full in paths(settings):
            written += _catch_up_one(s, trusted, p, full)
    return written


def _catch_up_one(s: Session, trusted: Mapping[str, Any], p: Path, full: bool) -> int:
    """One witness file, under an exclusive lock on it so two processes never append the same checkpoint."""
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as exc:
        log.error("cannot open the checkpoint witness %s: %s", p, exc)
        return 0
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        last = newest(p)
        after, prev = (int(last["seq"]), str(last["hash"])) if last else (0, None)
        rows = list(
            s.scalars(
                select(Checkpoint).where(Checkpoint.seq.is_not(None), Checkpoint.seq > after).order_by(Checkpoint.seq)
            )
        )
        good = []
        for row in rows:
            why = checkpoints.verify_checkpoint(row, trusted)
            if why is None and last is not None and row.seq != after + 1:
                why = f"checkpoint seq {row.seq} does not follow the witness's seq {after}"
            if why is None and prev is not None and row.prev_hash != prev:
                why = f"checkpoint seq {row.seq} does not continue from the witness's newest"
            if why is not None:
                log.error("not copying checkpoint %s into the witness %s: %s", row.id, p, why)
                break
            good.append(entry(row, full=full))
            after, prev = int(row.seq or 0), checkpoints.checkpoint_hash(row)
        if good:
            try:  # through the locked descriptor (O_APPEND), then fsync: one write per catch-up
                os.write(
                    fd, "".join(json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n" for e in good).encode()
                )
                os.fsync(fd)
            except OSError as exc:
                log.error("cannot append to the checkpoint witness %s: %s", p, exc)
                return 0
        return len(good)
    finally:
        os.close(fd)
