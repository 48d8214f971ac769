"""The audit trail's hash chain.

``hash = H(prev_hash ‖ canonical(event))`` where ``H`` is the event's ``hash_alg`` (None or absent: SHA-256; ``sm3``
under the ``sm2-sm3`` suite, and then committed in the canonical form too), the first event's ``prev_hash`` is
:data:`GENESIS` (:func:`genesis` of the first event's algorithm) and the
canonical encoding is the same sorted-key, ASCII-only JSON as segment chains (integrity.chain), so an auditor can
recompute any link with jq and sha256sum. Every field of an event is committed, the sequence number included: an
edited field, a removed, inserted or reordered event each break the chain at that event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from integrity import suites
from integrity.chain import canonical_json

AUDIT_CHAIN_VERSION = 1


def genesis(hash_alg: str = suites.DEFAULT_HASH) -> str:
    return suites.digest(hash_alg, b"nvr/audit-chain/v1/genesis")


GENESIS = genesis()

# Every column of an audit event except the two the chain itself produces.
HASHED_FIELDS = (
    "seq",
    "at_us",
    "actor_id",
    "actor_name",
    "actor_unit",
    "actor_roles",
    "action",
    "camera_id",
    "window_start_us",
    "window_end_us",
    "object_id",
    "purpose",
    "case_ref",
    "destination",
    "outcome",
    "reason",
    "client_addr",
    "user_agent",
    "request_id",
    "bytes",
)


def event_hash_alg(event: Mapping[str, object]) -> str:
    return suites.check_hash_alg(str(event.get("hash_alg") or suites.DEFAULT_HASH))


def canonical(event: Mapping[str, object]) -> bytes:
    missing = [f for f in HASHED_FIELDS if f not in event]
    if missing:
        raise KeyError(f"audit event lacks field(s) {missing}")
    body = {f: event[f] for f in HASHED_FIELDS}
    if event_hash_alg(event) != suites.DEFAULT_HASH:
        body["hash_alg"] = event["hash_alg"]
    return canonical_json({**body, "v": AUDIT_CHAIN_VERSION})


def link(prev_hash: str, event: Mapping[str, object]) -> str:
    return suites.digest(event_hash_alg(event), bytes.fromhex(prev_hash) + canonical(event))


@dataclass(frozen=True)
class AuditProblem:
    seq: int
    kind: str  # "edited", "missing", "reordered", "prev_mismatch", "head_mismatch"
    detail: str

    def __str__(self) -> str:
        return f"event {self.seq}: {self.kind}: {self.detail}"


def verify(events: Iterable[Mapping[str, object]], head_seq: int, head_hash: str) -> tuple[int, AuditProblem | None]:
    """Recompute the chain over ``events`` (in ascending ``seq`` order, as stored) and compare with the head.

    Returns the number of events checked and the first problem, or None. The first problem is the one to name:
    every later link depends on it.
    """
    prev_hash: str | None = None
    expected_seq = 1
    checked = 0
    last_seq = 0
    for ev in events:
        seq = int(ev["seq"])  # type: ignore[call-overload]
        if seq != expected_seq:
            if seq > expected_seq:
                missing = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq}..{seq - 1}"
                return checked, AuditProblem(expected_seq, "missing", f"event(s) {missing} are not in the log")
            return checked, AuditProblem(seq, "reordered", f"event {seq} appears after event {expected_seq - 1}")
        if prev_hash is None:
            prev_hash = genesis(event_hash_alg(ev))
        if ev["prev_hash"] != prev_hash:
            return checked, AuditProblem(
                seq, "prev_mismatch", "its stored previous hash is not the hash of the event before it"
            )
        recomputed = link(prev_hash, ev)
        if recomputed != ev["hash"]:
            return checked, AuditProblem(seq, "edited", "its content does not match its hash")
        prev_hash = recomputed
        expected_seq += 1
        last_seq = seq
        checked += 1
    if prev_hash is None:
        prev_hash = GENESIS
    if last_seq != head_seq or prev_hash != head_hash:
        if head_seq > last_seq:
            return checked, AuditProblem(
                last_seq + 1,
                "missing",
                f"the log ends at event {last_seq} but its head records event {head_seq}: newer events were removed",
            )
        return checked, AuditProblem(
            last_seq, "head_mismatch", f"the log's head records event {head_seq}, which does not match the last event"
        )
    return checked, None
