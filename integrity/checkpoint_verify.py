"""Every checkpoint checked: signatures by pinned keys, the chain of checkpoints, the heads each one names, and
the witness copies.

What :func:`check` reports (kinds of integrity.verify_archive.KINDS):

- ``untrusted_key``: a checkpoint signed by a key that the pinned key log (or ``trusted_key_fingerprints``) does not
  vouch for — a key row inserted into the database, say — and any problem of the key log itself;
- ``bad_signature``: a pinned key's signature that does not match the body (body, signature, time, seq edited);
- ``missing_checkpoint``: a sequence number missing from the chain, or a checkpoint a witness holds that the
  database no longer has (the newest ones deleted, all of them deleted);
- ``checkpoint_chain_break``: a checkpoint that does not continue from the one before it (``prev_hash``), a row
  without a sequence number, two rows with one number;
- ``witness_mismatch``: a checkpoint whose body differs from the copy a witness (or ``--against`` file) holds;
- ``time_inconsistent``: a checkpoint signed earlier than the one before it (the clock was set back after it had
  run ahead), or audit events dated after the checkpoint that covers them;
- ``missing_row`` / ``chain_break``: a camera head a checkpoint names that is no longer there (that seq with that
  link, or inside a tombstone whose last link matches), and the same for the audit head each checkpoint names.

Each distinct head is looked up once, in batches, whatever the number of checkpoints: with 10-minute checkpoints
most heads of one checkpoint are new, so the work grows with (checkpoints x cameras), in indexed queries.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from integrity import checkpoints, keylog, keys, signing, witness
from integrity.problems import Problem
from nvr.clock import iso
from nvr.config import Settings
from nvr.db import Database
from nvr.errors import NvrError
from nvr.models import AuditEvent, AuditHead, Checkpoint, Segment, SegmentTombstone

CHUNK = 500


@dataclass
class Result:
    problems: list[Problem] = field(default_factory=list)
    checkpoints: int = 0
    newest: Checkpoint | None = None
    """The newest checkpoint that verifies with a pinned key."""
    newest_body: dict[str, Any] | None = None
    witnesses: list[str] = field(default_factory=list)
    """Witness files (and --against copies) compared."""


def _cp_subject(seq: int | None, row_id: int | None = None) -> str:
    return f"checkpoint seq {seq}" if seq is not None else f"checkpoint id {row_id}"


def check(
    db: Database,
    settings: Settings,
    heads: dict[str, tuple[int, str]] | None = None,
    *,
    against: Iterable[Path] = (),
    cameras: bool = True,
    batch: int = 1000,
) -> Result:
    """Check every checkpoint (see the module docstring). ``heads``: each camera's (seq, link) as the chain walk
    found it, for "the newest rows were removed"; ``cameras=False`` checks only the audit part (``nvr audit
    verify``); ``against``: copies an auditor kept (``nvr checkpoints export``)."""
    res = Result()
    with db.session() as s:
        pinned = keys.pinned(s, settings)
    for why in pinned.problems:
        res.problems.append(Problem("untrusted_key", None, None, None, "key log", why))

    # -- the chain in the database --
    cam_heads: dict[str, dict[tuple[int, str], int]] = {}  # camera -> (seq, link) -> first checkpoint seq naming it
    audit_heads: dict[tuple[int, str], tuple[int, int]] = {}  # (seq, hash) -> (checkpoint seq, created_us)
    by_seq: dict[int, tuple[str, str]] = {}  # seq -> (body hash, body) of the database's rows
    # Registry records: (kind, id) -> (digest, checkpoint seq, audit seq) at the last checkpoint that named it, and
    # each change between two checkpoints: (kind, id, from cp, to cp, from audit seq, to audit seq, new digest).
    reg_last: dict[tuple[str, str], tuple[str, int, int]] = {}
    reg_changes: list[tuple[str, str, int, int, int, int, str | None]] = []
    prev: Checkpoint | None = None
    prev_hash: str | None = None
    expected = 1
    last_seq = 0
    while True:
        with db.session() as s:
            rows = list(
                s.scalars(
                    select(Checkpoint)
                    .where(Checkpoint.seq.is_not(None), Checkpoint.seq > last_seq)
                    .order_by(Checkpoint.seq)
                    .limit(batch)
                )
            )
        if not rows:
            break
        last_seq = int(rows[-1].seq or 0)
        for cp in rows:
            res.checkpoints += 1
            seq = int(cp.seq or 0)
            digest = checkpoints.checkpoint_hash(cp)
            by_seq[seq] = (digest, cp.body)
            subject = _cp_subject(seq)
            if cp.key_id not in pinned.keys:
                why = pinned.untrusted.get(cp.key_id, "it is not in the pinned key log")
                res.problems.append(
                    Problem(
                        "untrusted_key",
                        None,
                        None,
                        cp.created_us,
                        subject,
                        f"signed by key {cp.key_id}, which is not trusted: {why}",
                    )
                )
                continue
            bad = checkpoints.verify_checkpoint(cp, pinned.keys)
            if bad is not None:
                res.problems.append(Problem("bad_signature", None, None, cp.created_us, subject, bad))
                continue
            body = checkpoints.parse_body(cp.body)
            if seq > expected:
                span = f"seq {expected}" if seq == expected + 1 else f"seq {expected}..{seq - 1}"
                res.problems.append(
                    Problem(
                        "missing_checkpoint",
                        None,
                        None,
                        prev.created_us if prev else None,
                        f"checkpoint {span}",
                        f"the chain goes from seq {expected - 1} to seq {seq}: {span} removed from the database",
                    )
                )
            elif (
                body["v"] >= 2 and prev is not None and seq == int(prev.seq or 0) + 1 and body["prev_hash"] != prev_hash
            ):
                res.problems.append(
                    Problem(
                        "checkpoint_chain_break",
                        None,
                        None,
                        cp.created_us,
                        subject,
                        f"its prev_hash {str(body['prev_hash'])[:16]}… is not the hash of checkpoint seq {prev.seq} "
                        f"({str(prev_hash)[:16]}…): a checkpoint before it was replaced",
                    )
                )
            if prev is not None and cp.created_us < prev.created_us:
                res.problems.append(
                    Problem(
                        "time_inconsistent",
                        None,
                        None,
                        cp.created_us,
                        subject,
                        f"signed at {iso(cp.created_us)}, before checkpoint seq {prev.seq} ({iso(prev.created_us)}): "
                        "the clock ran ahead and was set back",
                    )
                )
            if cameras:
                for cam, head in body["cameras"].items():
                    cam_heads.setdefault(cam, {}).setdefault((int(head["seq"]), str(head["link"])), seq)
            a = body["audit"]
            if int(a["seq"]) > 0:
                audit_heads.setdefault((int(a["seq"]), str(a["hash"])), (seq, cp.created_us))
            reg = body.get("registry")
            if cameras and isinstance(reg, dict):
                for kind in ("cameras", "policies"):
                    for rid, d in (reg.get(kind) or {}).items():
                        last = reg_last.get((kind, rid))
                        if last is not None and last[0] != d:
                            reg_changes.append((kind, rid, last[1], seq, last[2], int(a["seq"]), str(d)))
                        reg_last[(kind, rid)] = (str(d), seq, int(a["seq"]))
                    gone = [k for k in reg_last if k[0] == kind and k[1] not in (reg.get(kind) or {})]
                    for k in gone:
                        last = reg_last.pop(k)
                        reg_changes.append((kind, k[1], last[1], seq, last[2], int(a["seq"]), None))
            prev, prev_hash, expected = cp, digest, seq + 1
            res.newest, res.newest_body = cp, body
    with db.session() as s:
        unnumbered = list(s.scalars(select(Checkpoint).where(Checkpoint.seq.is_(None))))
        audit_top = int(s.scalar(select(AuditHead.seq).where(AuditHead.id == 1)) or 0)
    for cp in unnumbered:
        res.checkpoints += 1
        res.problems.append(
            Problem(
                "checkpoint_chain_break",
                None,
                None,
                cp.created_us,
                _cp_subject(None, cp.id),
                "a checkpoint row without a sequence number (not written by the server)",
            )
        )

    # -- witnesses: the local one, a configured one, copies an auditor kept --
    sources = [(p, "witness") for p, _ in witness.paths(settings)] + [(Path(p), "copy") for p in against]
    for path, what in sources:
        if not path.exists():
            if what == "copy":
                res.problems.append(Problem("unverifiable", None, None, None, str(path), "the copy does not exist"))
            continue
        try:
            entries = witness.read(path)
        except (OSError, ValueError) as exc:
            res.problems.append(Problem("unverifiable", None, None, None, str(path), f"cannot be read: {exc}"))
            continue
        res.witnesses.append(str(path))
        extra_keys = pinned
        if what == "copy":
            extra_keys = keylog.verify_records(witness.read_key_log(path), frozenset(settings.trusted_key_fingerprints))
            for key_id, key in pinned.keys.items():
                extra_keys.keys.setdefault(key_id, key)
        _against_witness(res, entries, by_seq, path, what, extra_keys, cam_heads if cameras else None, audit_heads)

    # -- the heads every checkpoint named --
    if cameras:
        _camera_heads(db, res, cam_heads, heads or {})
    _audit_heads(db, res, audit_heads, audit_top)
    if cameras:
        _registry_changes(db, res, reg_changes)
    return res


def _registry_changes(
    db: Database, res: Result, changes: list[tuple[str, str, int, int, int, int, str | None]]
) -> None:
    """A registry record whose signed digest changed from one checkpoint to the next must have been changed by an
    audited service call in between: an event (after the first checkpoint's audit head, up to the second's) naming
    the new digest. Anything else was edited in the database, even if a later checkpoint signed the edited record."""
    for kind, rid, cp_a, cp_b, a_seq, b_seq, digest in changes:
        what = f"camera {rid}" if kind == "cameras" else f"policy {rid}"
        cam = rid if kind == "cameras" else None
        with db.session() as s:
            q = select(AuditEvent.seq).where(AuditEvent.seq > a_seq, AuditEvent.seq <= b_seq)
            if digest is not None:
                q = q.where(AuditEvent.reason.contains(digest))
            elif kind == "cameras":
                q = q.where(AuditEvent.camera_id == rid)
            else:  # a policy's events name it by name; its deletion names its id
                q = q.where(AuditEvent.reason.contains(f"; policy id {rid} deleted"))
            found = s.scalar(q.limit(1))
        if found is not None:
            continue
        change = "was removed" if digest is None else f"changed to sha256 {digest[:16]}…"
        res.problems.append(
            Problem(
                "registry_mismatch",
                cam,
                None,
                None,
                what,
                f"its record {change} between checkpoint seq {cp_a} and seq {cp_b} with no audited change "
                + (f"(audit events {a_seq + 1}..{b_seq} name none)" if b_seq > a_seq else "(no audit event between)")
                + ": it was edited in the database",
            )
        )


def _against_witness(
    res: Result,
    entries: list[dict[str, Any]],
    by_seq: dict[int, tuple[str, str]],
    path: Path,
    what: str,
    pinned: keylog.PinnedKeys,
    cam_heads: dict[str, dict[tuple[int, str], int]] | None,
    audit_heads: dict[tuple[int, str], tuple[int, int]],
) -> None:
    name = f"the {what} {path}"
    for e in entries:
        seq = int(e["seq"])
        have = by_seq.get(seq)
        if have is not None and have[0] == e["hash"]:
            continue
        body_text = e.get("body")
        entry_alg = checkpoints.suite_hash_alg(e.get("suite"))
        if isinstance(body_text, str) and checkpoints.body_hash(body_text, entry_alg) != e["hash"]:
            res.problems.append(
                Problem(
                    "unverifiable",
                    None,
                    None,
                    e.get("created_us"),
                    _cp_subject(seq),
                    f"{name}: its entry's body does not match its hash",
                )
            )
            continue
        if have is None:
            res.problems.append(
                Problem(
                    "missing_checkpoint",
                    None,
                    None,
                    e.get("created_us"),
                    _cp_subject(seq),
                    f"{name} holds it (signed {iso(e.get('created_us'))}, hash {e['hash'][:16]}…); "
                    "the database does not",
                )
            )
        else:
            res.problems.append(
                Problem(
                    "witness_mismatch",
                    None,
                    None,
                    e.get("created_us"),
                    _cp_subject(seq),
                    f"the database's checkpoint has hash {have[0][:16]}…, {name} has {e['hash'][:16]}…: it was "
                    "rewritten after the copy was taken",
                )
            )
        # A full entry the database lost or changed still vouches for the heads it names, if its signature holds.
        if isinstance(body_text, str):
            try:
                body = checkpoints.parse_body(body_text)
            except NvrError:  # a damaged entry proves nothing
                continue
            key = pinned.keys.get(str(e.get("key_id")))
            ok = False
            if key is not None:
                try:
                    ok = signing.verify(
                        key.suite, key.pem, body_text.encode("ascii"), bytes.fromhex(str(e.get("signature")))
                    )
                except (ValueError, UnicodeEncodeError, NvrError):
                    ok = False
            if not ok and what == "witness":
                continue  # a local witness entry that does not verify vouches for nothing
            if cam_heads is not None:
                for cam, head in body["cameras"].items():
                    cam_heads.setdefault(cam, {}).setdefault((int(head["seq"]), str(head["link"])), seq)
            a = body["audit"]
            if int(a["seq"]) > 0:
                audit_heads.setdefault((int(a["seq"]), str(a["hash"])), (seq, int(body["created_us"])))


def _chunks(items: list[int], n: int = CHUNK) -> Iterable[list[int]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _camera_heads(
    db: Database,
    res: Result,
    cam_heads: dict[str, dict[tuple[int, str], int]],
    heads: dict[str, tuple[int, str]],
) -> None:
    T = SegmentTombstone
    for cam in sorted(cam_heads):
        wanted = cam_heads[cam]
        seqs = sorted({q for q, _ in wanted})
        found: dict[int, tuple[str, int]] = {}
        with db.session() as s:
            for part in _chunks(seqs):
                for q, link, start in s.execute(
                    select(Segment.seq, Segment.link, Segment.start_us).where(
                        Segment.camera_id == cam, Segment.seq.in_(part)
                    )
                ):
                    found[int(q)] = (str(link), int(start))
            tombs = [
                (int(a), int(b), str(k), int(e))
                for a, b, k, e in s.execute(
                    select(T.first_seq, T.last_seq, T.last_link, T.end_us).where(T.camera_id == cam)
                )
            ]
            last_end = s.scalar(
                select(Segment.end_us).where(Segment.camera_id == cam).order_by(Segment.seq.desc()).limit(1)
            )
        have_seq = heads.get(cam, (0, ""))[0]
        missing: list[tuple[int, int]] = []
        for (q, link), cp_seq in sorted(wanted.items()):
            name = f"checkpoint seq {cp_seq}"
            if q in found:
                if found[q][0] != link:
                    res.problems.append(
                        Problem(
                            "chain_break",
                            cam,
                            q,
                            found[q][1],
                            f"segment {cam} #{q}",
                            f"{name} recorded link {link[:16]}… for it, the row's link is {found[q][0][:16]}…",
                        )
                    )
                continue
            tomb = next((t for t in tombs if t[0] <= q <= t[1]), None)
            if tomb is not None:
                if tomb[1] == q and tomb[2] != link:
                    res.problems.append(
                        Problem(
                            "chain_break",
                            cam,
                            q,
                            tomb[3],
                            f"tombstone {cam} ending at #{q}",
                            f"{name} recorded link {link[:16]}…, the tombstone's last link is {tomb[2][:16]}…",
                        )
                    )
                continue
            missing.append((q, cp_seq))
        # One problem per run of missing numbers: "the newest rows were removed" when they lie past the rows' end.
        reported: set[int] = set()
        for q, cp_seq in missing:
            if q in reported:
                continue
            if q > have_seq:
                first = have_seq + 1
                top = max(m for m, _ in missing)
                span = f"#{first}" if first == top else f"#{first}..#{top}"
                res.problems.append(
                    Problem(
                        "missing_row",
                        cam,
                        first,
                        int(last_end) if last_end is not None else None,
                        f"segment {cam} {span}",
                        f"the camera's rows end at seq {have_seq} but checkpoint seq {cp_seq} recorded seq {q}: "
                        "the newest segments were removed",
                    )
                )
                reported.update(m for m, _ in missing if m > have_seq)
            else:
                res.problems.append(
                    Problem(
                        "missing_row",
                        cam,
                        q,
                        None,
                        f"segment {cam} #{q}",
                        f"checkpoint seq {cp_seq} recorded it; it is neither a row nor inside a tombstone",
                    )
                )
                reported.add(q)


def _audit_heads(
    db: Database, res: Result, audit_heads: dict[tuple[int, str], tuple[int, int]], audit_top: int
) -> None:
    if not audit_heads:
        return
    seqs = sorted({q for q, _ in audit_heads})
    found: dict[int, tuple[str, int, str | None]] = {}
    with db.session() as s:
        for part in _chunks(seqs):
            for q, h, at, cam in s.execute(
                select(AuditEvent.seq, AuditEvent.hash, AuditEvent.at_us, AuditEvent.camera_id).where(
                    AuditEvent.seq.in_(part)
                )
            ):
                found[int(q)] = (str(h), int(at), cam)
    seen_missing = False
    for (q, h), (cp_seq, cp_time) in sorted(audit_heads.items()):
        name = f"checkpoint seq {cp_seq}"
        got = found.get(q)
        if got is None:
            if seen_missing:
                continue
            seen_missing = True
            res.problems.append(
                Problem(
                    "chain_break",
                    None,
                    None,
                    None,
                    f"audit event {q}",
                    f"{name} recorded audit event {q}, which is not in the log (the log's head is event {audit_top}): "
                    "events were removed",
                )
            )
        elif got[0] != h:
            res.problems.append(
                Problem(
                    "chain_break",
                    got[2],
                    None,
                    got[1],
                    f"audit event {q}",
                    f"{name} recorded hash {h[:16]}… for it, the log has {got[0][:16]}…: the log was rewritten",
                )
            )
        elif got[1] > cp_time + 60_000_000:
            res.problems.append(
                Problem(
                    "time_inconsistent",
                    got[2],
                    None,
                    got[1],
                    f"audit event {q}",
                    f"dated {iso(got[1])}, after {name} that covers it ({iso(cp_time)}): its clock ran ahead",
                )
            )


def dump(entries: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n" for e in entries)
