"""What an insider with the database (and sometimes the data folder) can do to an archive, as small functions the tamper
matrix (tests/integrity/test_tamper_matrix.py) combines. Each one changes the stored state directly (SQL, files), the
way an attacker would, never through the product's own writers: nothing here may leave the audit trail or a
checkpoint knowing about it, except where the attack itself is re-signing with the server's key.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select, update

from integrity import audit_chain, chain, checkpoints, signing
from nvr.models import AuditEvent, AuditHead, CameraChainHead, Checkpoint, Segment, SegmentTombstone, SigningKey
from nvr.runtime import Runtime
from tests.support.footage import CLIP_SECONDS, add_segments, segment_path

SEG = CLIP_SECONDS * 1_000_000


# --- footage whose every file differs (so a swap is a real change) ------------------------------------------------
def distinct_segments(rt: Runtime, camera_id: str, start_us: int, count: int) -> None:
    """Like footage.add_segments, but no two files are equal, within the camera or across cameras (each camera
    name starts its own run of clip variants), so a swap is a real change."""
    add_segments(rt, camera_id, start_us, count, first_variant=1 + 10 * (sum(map(ord, camera_id)) % 50))


# --- segment files and rows ---------------------------------------------------------------------------------------
def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def swap_files(a: Path, b: Path) -> None:
    tmp = a.with_name(a.name + ".swap")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)


def delete_rows(rt: Runtime, camera_id: str, seqs: list[int], *, files: bool) -> list[Path]:
    """Delete segment rows by SQL (and, with ``files``, their files too); returns the files' paths."""
    paths = [segment_path(rt, camera_id, q) for q in seqs]
    with rt.db.session() as s:
        s.execute(delete(Segment).where(Segment.camera_id == camera_id, Segment.seq.in_(seqs)))
    if files:
        for p in paths:
            p.unlink()
    return paths


def rechain_tail(rt: Runtime, camera_id: str, seqs: list[int], shift_us: int) -> None:
    """Move the rows ``seqs`` (the camera's newest, ascending) by ``shift_us`` in time and recompute their
    ``prev_link``/``link`` with integrity.chain.link, so the camera's chain recomputes from genesis by itself."""
    with rt.db.session() as s:
        rows = list(
            s.scalars(
                select(Segment).where(Segment.camera_id == camera_id, Segment.seq.in_(seqs)).order_by(Segment.seq)
            )
        )
        prev = s.scalar(select(Segment.link).where(Segment.camera_id == camera_id, Segment.seq == seqs[0] - 1))
        assert prev is not None and [r.seq for r in rows] == seqs
        for r in rows:
            fields: dict[str, Any] = {f: getattr(r, f) for f in (*chain.LINKED_FIELDS, *chain.OPTIONAL_FIELDS)}
            fields["start_us"] += shift_us
            fields["end_us"] += shift_us
            new = chain.link(prev, fields)
            s.execute(
                update(Segment)
                .where(Segment.id == r.id)
                .values(start_us=fields["start_us"], end_us=fields["end_us"], prev_link=prev, link=new)
            )
            prev = new
        # An attacker who knows the schema keeps the issued head in step with the rewritten rows too.
        s.execute(
            update(CameraChainHead)
            .where(CameraChainHead.camera_id == camera_id, CameraChainHead.seq == seqs[-1])
            .values(link=prev)
        )


def set_issued_head(rt: Runtime, camera_id: str, seq: int) -> None:
    """Point the camera's issued chain head (camera_chain_heads) back at its row ``seq``, as after a rewrite."""
    with rt.db.session() as s:
        link = s.scalar(select(Segment.link).where(Segment.camera_id == camera_id, Segment.seq == seq))
        s.execute(update(CameraChainHead).where(CameraChainHead.camera_id == camera_id).values(seq=seq, link=link))


def delete_run(rt: Runtime, camera_id: str, first: int, last: int) -> dict[str, Any]:
    """Delete rows ``first..last`` and their files by hand; returns the tombstone body (without ``deleted_us`` and
    ``last_batch_id``) whose links make the chain join across the hole, as the sweeper would have written it."""
    with rt.db.session() as s:
        rows = list(
            s.scalars(
                select(Segment)
                .where(Segment.camera_id == camera_id, Segment.seq >= first, Segment.seq <= last)
                .order_by(Segment.seq)
            )
        )
        assert [r.seq for r in rows] == list(range(first, last + 1))
        tomb = {
            "camera_id": camera_id,
            "first_seq": first,
            "last_seq": last,
            "prev_link": rows[0].prev_link,
            "last_link": rows[-1].link,
            "start_us": rows[0].start_us,
            "end_us": rows[-1].end_us,
            "segments": len(rows),
            "bytes": sum(r.bytes for r in rows),
        }
    paths = delete_rows(rt, camera_id, list(range(first, last + 1)), files=True)
    assert paths
    return tomb


def forge_tombstone(rt: Runtime, camera_id: str, first: int, last: int) -> None:
    """Delete rows ``first..last`` and their files and write the tombstone the sweeper would have written, with the
    links that make the chain join across the hole."""
    tomb = delete_run(rt, camera_id, first, last)
    with rt.db.session() as s:
        batch = int(s.scalar(select(func.coalesce(func.max(SegmentTombstone.last_batch_id), 0))) or 0) + 1
        s.add(SegmentTombstone(**tomb, deleted_us=rt.clock.now_us(), last_batch_id=batch))


# --- the audit trail ----------------------------------------------------------------------------------------------
def _event_fields(ev: AuditEvent) -> dict[str, Any]:
    return {f: getattr(ev, f) for f in (*audit_chain.HASHED_FIELDS, "hash_alg")}


def rechain_audit_tail(rt: Runtime, n: int) -> list[int]:
    """Edit the newest ``n`` events (their reason) and recompute their ``prev_hash``/``hash`` and the audit_head row,
    so the audit chain verifies by itself. Returns the edited sequence numbers."""
    with rt.db.session() as s:
        head = s.get(AuditHead, 1)
        assert head is not None and head.seq >= n
        evs = list(s.scalars(select(AuditEvent).where(AuditEvent.seq > head.seq - n).order_by(AuditEvent.seq)))
        assert len(evs) == n
        prev = evs[0].prev_hash
        for ev in evs:
            fields = _event_fields(ev)
            fields["reason"] = f"rewritten {ev.seq}: nothing happened"
            new = audit_chain.link(prev, fields)
            s.execute(
                update(AuditEvent)
                .where(AuditEvent.seq == ev.seq)
                .values(reason=fields["reason"], prev_hash=prev, hash=new)
            )
            prev = new
        s.execute(update(AuditHead).where(AuditHead.id == 1).values(hash=prev))
        return [ev.seq for ev in evs]


def truncate_audit_tail(rt: Runtime, n: int) -> list[int]:
    """Delete the newest ``n`` events and set audit_head back to the event before them. Returns the deleted seqs."""
    with rt.db.session() as s:
        head = s.get(AuditHead, 1)
        assert head is not None and head.seq > n
        keep = head.seq - n
        kept_hash = s.scalar(select(AuditEvent.hash).where(AuditEvent.seq == keep))
        assert kept_hash is not None
        gone = list(s.scalars(select(AuditEvent.seq).where(AuditEvent.seq > keep).order_by(AuditEvent.seq)))
        s.execute(delete(AuditEvent).where(AuditEvent.seq > keep))
        s.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=keep, hash=kept_hash))
        return gone


def newest_audit_seqs(rt: Runtime, n: int) -> list[int]:
    with rt.db.session() as s:
        return sorted(s.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq.desc()).limit(n)))


# --- keys and checkpoints -----------------------------------------------------------------------------------------
def insert_foreign_key(rt: Runtime, *, retired: bool = True) -> signing.Signer:
    """A signing_keys row for an Ed25519 key of the attacker's own. Retired (an 'old, rotated' key) by default, so
    the server keeps signing with its real key and nothing else changes."""
    _, signer = signing.generate()
    info = signer.public
    now = rt.clock.now_us()
    with rt.db.session() as s:
        oldest = s.scalar(select(func.min(SigningKey.created_us))) or now
        s.add(
            SigningKey(
                key_id=info.key_id,
                suite=info.suite,
                public_key_pem=info.pem,
                fingerprint=info.fingerprint,
                created_us=int(oldest) - 86_400_000_000,
                retired_us=int(oldest) if retired else None,
            )
        )
    return signer


def forge_checkpoint(rt: Runtime, signer: signing.Signer) -> int:
    """A checkpoint with a valid-looking body (checkpoints.make_body of the archive as it is now) signed by
    ``signer``, numbered and chained (seq, prev_hash, hash) like the real ones. Returns its id."""
    now = rt.clock.now_us()
    database_id = rt.db.database_id()
    with rt.db.session() as s:
        body = checkpoints.make_body(s, now, database_id)
        newest = s.scalar(select(Checkpoint).order_by(Checkpoint.created_us.desc(), Checkpoint.id.desc()).limit(1))
        max_seq = s.scalar(select(func.max(Checkpoint.seq)))
        row = Checkpoint(
            created_us=now,
            key_id=signer.key_id,
            suite=signer.suite,
            body=body,
            signature=signer.sign(body.encode("ascii")).hex(),
            seq=None if max_seq is None else int(max_seq) + 1,
            prev_hash=None if newest is None else (newest.hash or hashlib.sha256(newest.body.encode()).hexdigest()),
            hash=hashlib.sha256(body.encode("ascii")).hexdigest(),
        )
        s.add(row)
        s.flush()
        return int(row.id)


def checkpoint_ids(rt: Runtime) -> list[int]:
    with rt.db.session() as s:
        return list(s.scalars(select(Checkpoint.id).order_by(Checkpoint.id)))


def delete_checkpoints(rt: Runtime, ids: list[int]) -> None:
    with rt.db.session() as s:
        s.execute(delete(Checkpoint).where(Checkpoint.id.in_(ids)))


# --- the keys folder ----------------------------------------------------------------------------------------------
def snapshot_dir(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True)


def roll_back_dir(live: Path, snapshot: Path) -> list[str]:
    """Make ``live`` look like ``snapshot`` again (files changed since are restored, files added since removed):
    what restoring the keys folder from an older backup does to the witness kept there. Returns what changed."""
    changed = []
    for p in sorted(live.rglob("*")):
        if p.is_file():
            old = snapshot / p.relative_to(live)
            if not old.exists():
                p.unlink()
                changed.append(f"-{p.name}")
            elif old.read_bytes() != p.read_bytes():
                shutil.copy2(old, p)
                changed.append(f"~{p.name}")
    for old in sorted(snapshot.rglob("*")):
        p = live / old.relative_to(snapshot)
        if old.is_file() and not p.exists():
            shutil.copy2(old, p)
            changed.append(f"+{p.name}")
    return changed
