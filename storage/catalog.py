"""The segment catalogue: registering finished segments with their chain link, and reading them back."""

from __future__ import annotations

import json
import logging
from typing import Any, cast

from sqlalchemy import CursorResult, Table, bindparam, func, insert, literal_column, select, union_all, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import BindParameter

from integrity import chain
from nvr.cluster import check_fence
from nvr.errors import Kind, NvrError
from nvr.models import Camera, CameraChainHead, Checkpoint, RetentionPolicy, Segment, SegmentTombstone

log = logging.getLogger(__name__)

DAY_US = 86_400_000_000

_HEADS = cast(Table, CameraChainHead.__table__)
_SEGMENTS = cast(Table, Segment.__table__)
_TOMBS = cast(Table, SegmentTombstone.__table__)
_CHECKPOINTS = cast(Table, Checkpoint.__table__)

# Where a head came from; at equal seq the higher one wins (a row or tombstone names what verification walks).
_CHECKPOINT, _ISSUED, _TOMBSTONE, _ROW = 0, 1, 2, 3

# Built once: constructing these statements costs ten times more than running them (about 0.5 ms per segment).
_CAMERA: BindParameter[Any] = bindparam("camera_id")
_HEADS_OF_CAMERA = union_all(
    select(_HEADS.c.seq, _HEADS.c.link, literal_column(str(_ISSUED)).label("source")).where(
        _HEADS.c.camera_id == _CAMERA
    ),
    *(
        select(*q.subquery().c)
        for q in (
            select(_SEGMENTS.c.seq, _SEGMENTS.c.link, literal_column(str(_ROW)).label("source"))
            .where(_SEGMENTS.c.camera_id == _CAMERA)
            .order_by(_SEGMENTS.c.seq.desc())
            .limit(1),
            select(_TOMBS.c.last_seq, _TOMBS.c.last_link, literal_column(str(_TOMBSTONE)).label("source"))
            .where(_TOMBS.c.camera_id == _CAMERA)
            .order_by(_TOMBS.c.last_seq.desc())
            .limit(1),
            # The newest checkpoint as (id, signature): its body is parsed once (see checkpoint_heads).
            select(_CHECKPOINTS.c.id, _CHECKPOINTS.c.signature, literal_column(str(_CHECKPOINT)).label("source"))
            .where(_CHECKPOINTS.c.seq.is_not(None))
            .order_by(_CHECKPOINTS.c.seq.desc())
            .limit(1),
        )
    ),
)
"""A camera's heads as (seq, link, source) rows: issued head, last row, last tombstone, newest checkpoint."""
_INSERT_HEAD = insert(_HEADS)
_ADVANCE_HEAD = (
    update(_HEADS)
    .where(_HEADS.c.camera_id == bindparam("head_camera"), _HEADS.c.seq == bindparam("expected"))
    .values(seq=bindparam("new_seq"), link=bindparam("new_link"))
)
_CHECKPOINT_BODY = select(_CHECKPOINTS.c.body).where(_CHECKPOINTS.c.id == bindparam("id"))
_MIN_DAYS = (
    select(RetentionPolicy.min_days)
    .join(Camera, Camera.policy_id == RetentionPolicy.id)
    .where(Camera.id == bindparam("camera_id"))
)

_checkpoint_heads: dict[tuple[int, str], dict[str, tuple[int, str]]] = {}
"""Parsed ``cameras`` of the newest checkpoints seen, by (checkpoint id, signature): the signature tells apart
checkpoints of two databases this process opens that share an id. Bounded by :data:`_CACHE_SIZE`."""
_CACHE_SIZE = 8


def last_segment(session: Session, camera_id: str) -> Segment | None:
    return session.scalar(select(Segment).where(Segment.camera_id == camera_id).order_by(Segment.seq.desc()).limit(1))


def register_segment(
    session: Session,
    *,
    camera_id: str,
    volume_id: str,
    rel_path: str,
    start_us: int,
    media_duration_us: int,
    size: int,
    frames: int,
    codecs: str,
    clock_offset_us: int,
    sha256: str,
    recovered: bool,
    now_us: int,
    floor_days: int,
    hash_alg: str = "sha256",
    plain_digest: str | None = None,
    encryption: str | None = None,
    fence: tuple[str, int] | None = None,
    fence_end_us: int | None = None,
) -> Segment:
    """Insert the next row of the camera's chain. Runs inside the caller's transaction; flushes, never commits.

    The row continues from :func:`chain_head` (the newest seq ever issued, whatever was deleted since), and the
    camera's ``camera_chain_heads`` row is advanced to it in the same transaction by one conditional statement:
    of two writers that read the same head, the second finds the head moved (PostgreSQL re-checks the condition
    after the first commits; SQLite's write lock orders them) and gets ``segment_chain_conflict`` (CONFLICT)
    instead of a forked chain. The transaction is then unusable: the caller rolls it back (``db.session()`` does).
    The unique (camera_id, seq) and link constraints stay as a second guard.

    ``sha256`` is the digest of the stored bytes under ``hash_alg`` (``sha256`` or ``sm3``); an encrypted segment
    also gives its plaintext's ``plain_digest`` (same algorithm) and its ``encryption`` (cipher). A camera's first
    segment starts from the genesis of its own algorithm.

    ``fence`` = (node id, lease token) the recorder held when the segment began (nvr.cluster.check_fence): checked
    first, in this transaction, so a node that lost the camera's lease meanwhile gets ``lease_lost`` and no row.
    ``fence_end_us`` (start-up recovery): the segment may still be registered if it ended before the camera's new
    holder acquired it, i.e. it overlaps nothing recorded since.
    """
    if fence is not None:
        # Only a recovered file's exception needs the camera's newest end: not a query per live insert.
        last_end = (
            session.scalar(select(func.max(Segment.end_us)).where(Segment.camera_id == camera_id))
            if fence_end_us is not None
            else None
        )
        check_fence(
            session,
            camera_id,
            fence,
            start_us + media_duration_us if fence_end_us is None else fence_end_us,
            recovered=fence_end_us is not None,
            start_us=start_us,
            last_end_us=last_end,
        )
    heads = _heads(session, camera_id)
    head_seq, head_link = newest(heads, camera_id, hash_alg)
    end_us = start_us + media_duration_us
    row = Segment(
        camera_id=camera_id,
        seq=head_seq + 1,
        volume_id=volume_id,
        rel_path=rel_path,
        start_us=start_us,
        end_us=end_us,
        media_duration_us=media_duration_us,
        bytes=size,
        frames=frames,
        codecs=codecs,
        clock_offset_us=clock_offset_us,
        sha256=sha256,
        hash_alg=hash_alg,
        plain_digest=plain_digest,
        encryption=encryption,
        prev_link=head_link,
        recovered=recovered,
        created_us=now_us,
        retain_until_us=end_us + min_days(session, camera_id, floor_days) * DAY_US,
    )
    row.link = chain.link(row.prev_link, linked_fields(row))
    issued = next((seq for seq, _link, source in heads if source == _ISSUED), None)
    _advance_issued(session, camera_id, issued, row.seq, row.link)
    session.add(row)
    session.flush()
    return row


def _advance_issued(session: Session, camera_id: str, expected: int | None, seq: int, link: str) -> None:
    """Move the camera's issued head from ``expected`` (None: it has none yet) to ``seq``/``link``, or fail."""
    conflict = NvrError(
        Kind.CONFLICT,
        "segment_chain_conflict",
        f"camera {camera_id}: another writer issued chain seq {seq} first; this segment was not registered",
    )
    if expected is None:
        try:
            session.execute(_INSERT_HEAD, {"camera_id": camera_id, "seq": seq, "link": link})
        except IntegrityError:
            raise conflict from None
        return
    moved = cast(
        CursorResult[Any],
        session.execute(
            _ADVANCE_HEAD, {"head_camera": camera_id, "expected": expected, "new_seq": seq, "new_link": link}
        ),
    ).rowcount
    if moved != 1:
        raise conflict


def linked_fields(row: Segment) -> dict[str, object]:
    return {f: getattr(row, f) for f in (*chain.LINKED_FIELDS, *chain.OPTIONAL_FIELDS)}


def min_days(session: Session, camera_id: str, floor_days: int) -> int:
    """Days a segment of the camera finished now must be kept: its policy's ``min_days``, never below the floor."""
    policy_days = session.scalar(_MIN_DAYS, {"camera_id": camera_id})
    return max(int(policy_days or 0), floor_days)


def chain_head(session: Session, camera_id: str) -> tuple[int, str]:
    """(seq, link) the camera's next segment continues from; (0, genesis) if it never had one. The newest of:

    - its ``camera_chain_heads`` row: the newest seq ever issued, kept apart from the rows;
    - its last segment row;
    - its last tombstone (retention may have deleted the newest rows while older, held ones stay);
    - its head in the newest signed checkpoint (the table above can be edited by a database writer too).

    ``register_segment`` must continue from this, not from the last row alone: restarting at seq 1 once every row
    was swept would fork the chain, and re-issuing the seq of rows someone deleted by hand would pass new content
    off under old numbers. Continuing from the issued head instead makes deleted rows show as missing rows.
    """
    return newest(_heads(session, camera_id), camera_id)


def newest(heads: list[tuple[int, str, int]], camera_id: str, hash_alg: str = "sha256") -> tuple[int, str]:
    """The (seq, link) of the newest of ``(seq, link, source)`` heads; at equal seq a row beats a tombstone beats
    the issued head beats a checkpoint. (0, genesis of ``hash_alg``) when there are none."""
    if not heads:
        return 0, chain.genesis(camera_id, hash_alg)
    seq, link, _source = max(heads, key=lambda h: (h[0], h[2]))
    return seq, link


def _heads(session: Session, camera_id: str) -> list[tuple[int, str, int]]:
    """The camera's heads ``(seq, link, source)`` from the issued-head table, its last row, its last tombstone and
    the newest checkpoint, in one statement (one round trip, one snapshot). The newest checkpoint comes back as
    ``(id, signature)``; its parsed body is cached, so only a changed checkpoint costs a read of its body."""
    found = session.execute(_HEADS_OF_CAMERA, {"camera_id": camera_id}).all()
    heads: list[tuple[int, str, int]] = []
    for a, b, source in found:
        if int(source) != _CHECKPOINT:
            heads.append((int(a), str(b), int(source)))
            continue
        signed = checkpoint_heads(session, int(a), str(b)).get(camera_id)
        if signed is not None:
            heads.append((signed[0], signed[1], _CHECKPOINT))
    return heads


def checkpoint_heads(session: Session, checkpoint_id: int, signature: str) -> dict[str, tuple[int, str]]:
    """``cameras`` of a checkpoint's body as {camera_id: (seq, link)}, parsed once per (id, signature).

    The signature is not checked here (``nvr verify`` does): a body that does not parse only loses its heads, with
    one warning, so a damaged checkpoint never stops recording.
    """
    key = (checkpoint_id, signature)
    cached = _checkpoint_heads.get(key)
    if cached is not None:
        return cached
    body = session.scalar(_CHECKPOINT_BODY, {"id": checkpoint_id})
    parsed = _parse_heads(body)
    if parsed is None:
        log.warning("checkpoint %s: body has no readable camera heads; ignored for chain heads", checkpoint_id)
        parsed = {}
    if len(_checkpoint_heads) >= _CACHE_SIZE:
        _checkpoint_heads.clear()
    _checkpoint_heads[key] = parsed
    return parsed


def _parse_heads(body: str | None) -> dict[str, tuple[int, str]] | None:
    try:
        cameras: Any = json.loads(body or "").get("cameras")
    except (TypeError, ValueError, AttributeError):
        return None
    if not isinstance(cameras, dict):
        return None
    heads: dict[str, tuple[int, str]] = {}
    for cam, head in cameras.items():
        if isinstance(head, dict):
            seq, link = head.get("seq"), head.get("link")
            if isinstance(seq, int) and not isinstance(seq, bool) and isinstance(link, str):
                heads[str(cam)] = (seq, link)
    return heads


def verify_chain(session: Session, camera_id: str) -> list[chain.ChainProblem]:
    """Recompute the camera's whole chain from its rows and the tombstones of what retention deleted.

    Reads every row of the camera (seq order, linked fields only): an audit-time check, not a per-request one.
    """
    fields = (*chain.LINKED_FIELDS, *chain.OPTIONAL_FIELDS, "prev_link", "link")
    rows = session.execute(
        select(*(getattr(Segment, f) for f in fields)).where(Segment.camera_id == camera_id).order_by(Segment.seq)
    )
    tombstones = session.execute(
        select(
            SegmentTombstone.first_seq,
            SegmentTombstone.last_seq,
            SegmentTombstone.prev_link,
            SegmentTombstone.last_link,
        ).where(SegmentTombstone.camera_id == camera_id)
    )
    return chain.verify_with_tombstones(
        camera_id, [dict(r._mapping) for r in rows], [dict(t._mapping) for t in tombstones]
    )
