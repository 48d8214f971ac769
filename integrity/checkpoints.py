"""Signed checkpoints: every few minutes the server signs what every camera's chain and the audit log look like.

A checkpoint's body is canonical JSON (integrity.chain.canonical_json: sorted keys, no spaces, ASCII)::

    {"audit": {"hash": <hex>, "seq": <int>},
     "cameras": {<camera_id>: {"link": <hex>, "seq": <int>}, ...},
     "created_us": <int>, "database_id": <str>, "type": "nvr-checkpoint", "v": 1}

``cameras`` names each camera's chain head across what retention deleted (the newer of its last segment row and
its last tombstone; cameras that never finished a segment are left out) and ``audit`` the audit log's head row.
The row keeps the exact text that was signed and the hex signature, so the body can be re-verified byte for byte.
Since a segment link commits to every earlier link, a checkpoint naming ``{seq, link}`` of a camera proves that
camera's segments up to ``seq`` existed, unaltered, when the checkpoint was made (issue 5).

Heads only ever move forward, so "covers seq" is monotone along the checkpoints in creation order; :func:`covering`
finds the earliest covering one starting at the segment row's own ``created_us`` and walking forward a little,
with a binary search on time as the fallback (tens of thousands of checkpoints stay cheap).

:class:`CheckpointScheduler` runs in the server: one checkpoint at start, then one whenever the newest one in the
database is ``checkpoint_interval_minutes`` old by the injected clock (so several server processes sharing a
database do not each write their own), creating the first signing key if there is none.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from integrity import keys, records, signing, suites, witness
from integrity.chain import canonical_json
from nvr.background import BackgroundLoop
from nvr.clock import Clock
from nvr.config import Settings
from nvr.db import Database
from nvr.errors import Kind, NvrError
from nvr.models import AuditHead, CameraChainHead, Checkpoint, Segment, SegmentTombstone

H = CameraChainHead

log = logging.getLogger(__name__)

BODY_TYPE = "nvr-checkpoint"
BODY_VERSION = 2
BODY_VERSIONS = (1, 2)
"""Version 1 (before checkpoints were chained) still verifies; version 2 adds seq, prev_hash and registry."""
WALK = 64
"""Checkpoints :func:`covering` reads forward from the segment's creation before it switches to a binary search."""
POLL_SECONDS = 30.0
"""Longest the scheduler sleeps before looking at the clock again (it also wakes on :meth:`wake`)."""


# --- making -----------------------------------------------------------------------------------------------------
def chain_heads(session: Session) -> dict[str, dict[str, Any]]:
    """Every camera's chain head ``{"seq", "link"}``: the newer of its last segment row and its last tombstone
    (storage.catalog.chain_head, for all cameras in two queries)."""
    heads: dict[str, tuple[int, str]] = {}
    last_rows = select(Segment.camera_id, func.max(Segment.seq).label("seq")).group_by(Segment.camera_id).subquery()
    for cam, seq, link in session.execute(
        select(Segment.camera_id, Segment.seq, Segment.link).join(
            last_rows, (Segment.camera_id == last_rows.c.camera_id) & (Segment.seq == last_rows.c.seq)
        )
    ):
        heads[cam] = (int(seq), str(link))
    T = SegmentTombstone
    last_tombs = select(T.camera_id, func.max(T.last_seq).label("seq")).group_by(T.camera_id).subquery()
    for cam, seq, link in session.execute(
        select(T.camera_id, T.last_seq, T.last_link).join(
            last_tombs, (T.camera_id == last_tombs.c.camera_id) & (T.last_seq == last_tombs.c.seq)
        )
    ):
        heads[cam] = max(heads.get(cam, (0, "")), (int(seq), str(link)))
    return {cam: {"seq": seq, "link": link} for cam, (seq, link) in sorted(heads.items())}


def issued_heads(session: Session) -> dict[str, tuple[int, str]]:
    """Every camera's newest issued (seq, link) as the catalogue keeps it apart from the rows."""
    return {str(c): (int(q), str(k)) for c, q, k in session.execute(select(H.camera_id, H.seq, H.link))}


def make_body(session: Session, now_us: int, database_id: str, seq: int = 0, prev_hash: str | None = None) -> str:
    """The canonical body of checkpoint ``seq`` continuing from ``prev_hash`` (version 2): every camera's chain head
    (the newest of its rows, tombstones and issued head), the audit head, and digests of every registry record."""
    head_seq, head_hash = session.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)).one()
    heads = chain_heads(session)
    floors = list(issued_heads(session).items())
    last = newest(session)
    if last is not None:  # what the previous checkpoint signed never moves back, whatever the rows now say
        with contextlib.suppress(NvrError):
            floors += [(c, (int(h["seq"]), str(h["link"]))) for c, h in parse_body(last.body)["cameras"].items()]
    for cam, (q, k) in floors:
        if q > heads.get(cam, {"seq": 0})["seq"]:
            heads[cam] = {"seq": q, "link": k}
    body = {
        "type": BODY_TYPE,
        "v": BODY_VERSION,
        "seq": int(seq),
        "prev_hash": prev_hash,
        "created_us": int(now_us),
        "database_id": database_id,
        "cameras": dict(sorted(heads.items())),
        "audit": {"seq": int(head_seq), "hash": str(head_hash)},
        "registry": records.registry_digests(session),
    }
    return canonical_json(body).decode("ascii")


def body_hash(body: str, hash_alg: str = suites.DEFAULT_HASH) -> str:
    """What the next checkpoint's ``prev_hash`` names: the digest of the body's exact bytes under the algorithm of
    the checkpoint's suite (SHA-256 for ``ed25519-sha256``, SM3 for ``sm2-sm3``; :func:`suite_hash_alg`)."""
    return suites.digest(hash_alg, body.encode("ascii"))


def suite_hash_alg(suite: str | None) -> str:
    """The hash algorithm of a checkpoint's suite. A suite the server does not know (a row written by hand) is
    hashed as SHA-256: its signature check reports it."""
    s = suites.SUITES.get(str(suite))
    return s.hash_alg if s is not None else suites.DEFAULT_HASH


def checkpoint_hash(row: Checkpoint) -> str:
    """The hash of a stored checkpoint's body with its own suite's algorithm (what its successor's ``prev_hash``
    and a witness entry name)."""
    return body_hash(row.body, suite_hash_alg(row.suite))


def newest(session: Session) -> Checkpoint | None:
    """The newest checkpoint by sequence number (rows without one, written by hand, never count)."""
    return session.scalar(
        select(Checkpoint).where(Checkpoint.seq.is_not(None)).order_by(Checkpoint.seq.desc()).limit(1)
    )


def make_checkpoint(
    session: Session,
    signer: signing.Signer,
    now_us: int,
    database_id: str,
    *,
    continue_from: tuple[int, str] | None = None,
) -> Checkpoint:
    """Sign the current heads as the next checkpoint of the chain and store it (flushed; the caller commits).

    Takes the audit head's row lock first (SQLite: the write lock), so two processes never sign the same seq and
    the heads read are those of one moment. ``continue_from`` (seq, hash): a witness's newest checkpoint, when it is
    newer than the database's (checkpoint rows were deleted): the chain then continues from the witness, so the gap
    stays visible instead of being papered over with re-used numbers."""
    session.execute(update(AuditHead).where(AuditHead.id == 1).values(seq=AuditHead.seq))
    last = newest(session)
    seq, prev = (int(last.seq or 0), last.hash or checkpoint_hash(last)) if last is not None else (0, None)
    if continue_from is not None and continue_from[0] > seq:
        log.error(
            "the database's newest checkpoint is seq %d but a witness has seq %d: checkpoints were removed from the "
            "database; continuing the chain from the witness",
            seq,
            continue_from[0],
        )
        seq, prev = continue_from
    body = make_body(session, now_us, database_id, seq + 1, prev)
    row = Checkpoint(
        created_us=int(now_us),
        key_id=signer.key_id,
        suite=signer.suite,
        body=body,
        signature=signer.sign(body.encode("ascii")).hex(),
        seq=seq + 1,
        prev_hash=prev,
        hash=body_hash(body, suite_hash_alg(signer.suite)),
    )
    session.add(row)
    session.flush()
    return row


def sign_checkpoint(db: Database, settings: Settings, clock: Clock, now_us: int | None = None) -> Checkpoint:
    """Sign and commit one checkpoint now (what every server start does), creating the first key if there is none,
    continuing the chain from the newest witness when the database has lost checkpoints, then append it (and any
    committed one they lack) to the witnesses. ``now_us``: the time to sign (default: the clock's)."""
    from integrity import witness

    database_id = db.database_id()
    with db.session() as s:
        keys.ensure_key(s, settings.keys_dir, clock.now_us(), settings.crypto_suite)
    with db.session() as s:
        row = make_checkpoint(
            s,
            keys.active_signer(s, settings.keys_dir),
            clock.now_us() if now_us is None else now_us,
            database_id,
            continue_from=witness.continue_from(settings),
        )
    witness.catch_up(db, settings)
    return row


# --- reading and verifying --------------------------------------------------------------------------------------
def parse_body(text: str) -> dict[str, Any]:
    """The body as a dict; ``checkpoint_invalid`` (DATA_LOSS) when it is not a checkpoint body of this version."""
    try:
        body = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise NvrError(Kind.DATA_LOSS, "checkpoint_invalid", f"checkpoint body is not JSON: {exc}") from None
    ok = (
        isinstance(body, dict)
        and body.get("type") == BODY_TYPE
        and body.get("v") in BODY_VERSIONS
        and isinstance(body.get("created_us"), int)
        and isinstance(body.get("database_id"), str)
        and isinstance(body.get("cameras"), dict)
        and all(_is_head(h, "link") for h in body["cameras"].values())
        and _is_head(body.get("audit"), "hash")
    )
    if not ok:
        raise NvrError(
            Kind.DATA_LOSS, "checkpoint_invalid", f"not a {BODY_TYPE} body (version {BODY_VERSIONS}): {text[:200]!r}"
        )
    if body["v"] >= 2 and not (
        isinstance(body.get("seq"), int)
        and (body.get("prev_hash") is None or isinstance(body.get("prev_hash"), str))
        and isinstance(body.get("registry"), dict)
    ):
        raise NvrError(
            Kind.DATA_LOSS, "checkpoint_invalid", f"a version 2 body lacks seq, prev_hash or registry: {text[:200]!r}"
        )
    return body


def _is_head(h: object, hash_name: str) -> bool:
    return isinstance(h, dict) and isinstance(h.get("seq"), int) and isinstance(h.get(hash_name), str)


class KeyLike(Protocol):
    @property
    def key_id(self) -> str: ...

    @property
    def suite(self) -> str: ...

    @property
    def public_key_pem(self) -> str: ...


def verify_checkpoint(row: Checkpoint, keys_by_id: Mapping[str, KeyLike]) -> str | None:
    """None when ``row``'s signature is its key's signature of exactly its body; otherwise what is wrong.
    ``keys_by_id``: the trusted keys (integrity.keys.trusted_keys), never the database's table."""
    key = keys_by_id.get(row.key_id)
    if key is None:
        return f"checkpoint {row.id}: signed by key {row.key_id}, which is not a pinned signing key"
    if key.suite != row.suite:
        return f"checkpoint {row.id}: suite {row.suite} differs from key {row.key_id}'s suite {key.suite}"
    try:
        signature = bytes.fromhex(row.signature)
    except ValueError:
        return f"checkpoint {row.id}: signature is not hex"
    try:
        good = signing.verify(key.suite, key.public_key_pem, row.body.encode("ascii"), signature)
    except (NvrError, UnicodeEncodeError) as exc:
        return f"checkpoint {row.id}: cannot be checked: {exc}"
    if not good:
        return f"checkpoint {row.id}: signature by {key.key_id} does not match its body (body or signature altered)"
    try:
        body = parse_body(row.body)
    except NvrError as exc:
        return f"checkpoint {row.id}: {exc.message}"
    if body["created_us"] != row.created_us:
        return f"checkpoint {row.id}: signed time {body['created_us']} differs from the stored {row.created_us}"
    if body["v"] >= 2 and (body["seq"] != row.seq or body["prev_hash"] != row.prev_hash):
        return (
            f"checkpoint {row.id}: signed seq {body['seq']} / prev_hash {str(body['prev_hash'])[:16]} differ from the "
            f"stored seq {row.seq} / prev_hash {str(row.prev_hash)[:16]}"
        )
    return None


def covers(row: Checkpoint, camera_id: str, seq: int) -> bool:
    head = parse_body(row.body)["cameras"].get(camera_id)
    return head is not None and head["seq"] >= seq


def covering(
    session: Session, camera_id: str, seq: int, trusted: Mapping[str, KeyLike] | None = None
) -> Checkpoint | None:
    """The earliest checkpoint (by ``created_us``) whose body has ``cameras[camera_id].seq >= seq``, or None.
    With ``trusted`` (the pinned keys), only a checkpoint whose signature verifies with one of them: a row signed by
    a key inserted into the database is never what an export bundle rests on."""
    found = _covering(session, camera_id, seq)
    if trusted is None or found is None:
        return found
    if verify_checkpoint(found, trusted) is None:
        return found
    later = session.scalars(
        select(Checkpoint)
        .where(Checkpoint.created_us >= found.created_us, Checkpoint.id != found.id)
        .order_by(Checkpoint.created_us, Checkpoint.id)
        .limit(WALK)
    )
    for row in later:
        if covers(row, camera_id, seq) and verify_checkpoint(row, trusted) is None:
            return row
    return None


def _covering(session: Session, camera_id: str, seq: int) -> Checkpoint | None:
    order = (Checkpoint.created_us, Checkpoint.id)
    newest = session.scalar(select(Checkpoint).order_by(*(c.desc() for c in order)).limit(1))
    if newest is None or not covers(newest, camera_id, seq):
        return None  # heads only move forward: if the newest does not cover it, none does
    made = session.scalar(select(Segment.created_us).where(Segment.camera_id == camera_id, Segment.seq == seq))
    # Usually the first checkpoint after the row was made covers it (or the next, if it ran before the commit).
    walked: list[Checkpoint] = []
    if made is not None:
        walked = list(
            session.scalars(select(Checkpoint).where(Checkpoint.created_us >= made).order_by(*order).limit(WALK))
        )
    for row in walked:
        if covers(row, camera_id, seq):
            return row
    # Not within the walk (a swept row, a clock step, a long outage of the scheduler): binary search on time for
    # the smallest t whose first checkpoint at or after t covers; "covers" only turns from false to true.
    lo = walked[-1].created_us + 1 if walked else int(session.scalar(select(func.min(Checkpoint.created_us))) or 0)
    hi = newest.created_us
    lo = min(lo, hi)
    while lo < hi:
        mid = (lo + hi) // 2
        found = _first_at_or_after(session, mid)
        if found is not None and covers(found, camera_id, seq):
            hi = mid
        else:
            lo = mid + 1
    return _first_at_or_after(session, lo) or newest


def _first_at_or_after(session: Session, t: int) -> Checkpoint | None:
    return session.scalar(
        select(Checkpoint).where(Checkpoint.created_us >= t).order_by(Checkpoint.created_us, Checkpoint.id).limit(1)
    )


# --- the schedule -----------------------------------------------------------------------------------------------
class CheckpointScheduler(BackgroundLoop):
    """Writes a checkpoint at start and then every ``checkpoint_interval_minutes`` by ``clock``, in a daemon
    thread; :meth:`wake` makes it look at the clock now, :meth:`request` makes it write one now. A failing run
    (no database, a lost key file) is logged, kept in :attr:`last_error`, and retried; the thread never dies."""

    thread_name = "checkpoints"

    def __init__(
        self,
        db: Database,
        settings: Settings,
        clock: Clock,
        keys_dir: Path,
        *,
        poll_seconds: float = POLL_SECONDS,
        trusted: Any = None,
    ) -> None:
        super().__init__()
        self.db, self.settings, self.clock, self.keys_dir = db, settings, clock, keys_dir
        self.poll_seconds = poll_seconds
        self.written = 0
        """Checkpoints this scheduler wrote."""
        self.last_checkpoint_id: int | None = None
        self.last_error: str | None = None
        self._forced = True  # the first pass writes one
        self._started_up = False
        self._last_mono: int | None = None
        self._left_us = 0
        self._database_id: str | None = None
        if trusted is None:
            from integrity import trusted_time

            trusted = trusted_time.shared(db, settings, clock)
        self.trusted: Any = trusted
        """An integrity.trusted_time.TrustedClock: checkpoints are stamped with its time, not the raw wall clock."""

    @property
    def interval_us(self) -> int:
        return int(self.settings.checkpoint_interval_minutes * 60_000_000)

    def start(self) -> None:
        super().start()
        log.info("checkpoint scheduler started: every %g min", self.settings.checkpoint_interval_minutes)

    def request(self) -> None:
        """Write a checkpoint now, whatever the schedule says."""
        self._forced = True
        self._wake.set()

    def step(self) -> float:
        if not self._started_up:
            self._start_up()
            self._started_up = True
        wait = min(self.poll_seconds, self._pass())
        self.last_error = None
        return max(wait, 0.01)

    def failed(self, exc: Exception) -> float:
        message = str(exc)
        if message != self.last_error:  # once per distinct problem, not every poll
            if isinstance(exc, NvrError):
                log.error("cannot write a signed checkpoint: %s", message)
            else:
                log.exception("cannot write a signed checkpoint")
        self.last_error = message
        return self.poll_seconds

    def _start_up(self) -> None:
        self._database_id = self.db.database_id()
        with self.db.session() as s:
            keys.ensure_key(s, self.keys_dir, self.clock.now_us(), self.settings.crypto_suite)
        with self.db.session() as s:
            keys.purge_retired(s, self.keys_dir)

    def _pass(self) -> float:
        """Write a checkpoint if one is due; returns how many seconds until the next one is."""
        now, mono = self.clock.now_us(), self.clock.monotonic_us()
        forced, self._forced = self._forced, False
        try:
            row = self._write_if_due(now, mono, forced)
        except BaseException:
            self._forced = self._forced or forced
            raise
        if row is None:
            return self._left_us / 1e6
        witness.catch_up(self.db, self.settings)
        if self.trusted is not None:
            self.trusted.refresh()
        self._last_mono = mono
        self.written += 1
        self.last_checkpoint_id = row.id
        log.debug("checkpoint %s written", row.id)
        return self.interval_us / 1e6

    def _write_if_due(self, now: int, mono: int, forced: bool) -> Checkpoint | None:
        with self.db.session() as s:
            newest = s.scalar(select(func.max(Checkpoint.created_us)))
            if not forced and newest is not None:
                if newest <= now:
                    left = newest + self.interval_us - now
                else:  # the wall clock went back past the newest checkpoint: keep the pace by the monotonic clock
                    left = 0 if self._last_mono is None else self._last_mono + self.interval_us - mono
                if left > 0:
                    self._left_us = left
                    return None
            return make_checkpoint(
                s,
                keys.active_signer(s, self.keys_dir),
                self.stamp(now),
                self._database_id or "",
                continue_from=witness.continue_from(self.settings),
            )

    def stamp(self, now: int) -> int:
        """The time a new checkpoint is signed at: never past what the trusted clock allows, so a clock that jumped
        ahead cannot move the witnessed time forward (integrity.trusted_time)."""
        if self.trusted is None:
            return now
        return int(self.trusted.checkpoint_time_us())
