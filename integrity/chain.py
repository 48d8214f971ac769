"""Per-camera hash chains over segment rows.

``link = SHA-256(prev_link ‖ canonical(row))``, with ``prev_link`` of a camera's first segment being the camera's
genesis value. Any edited, removed, inserted or reordered row changes every later link, so a verifier that
recomputes the chain from the rows, and compares it with a signed checkpoint, names the first bad one.

The canonical encoding is JSON with sorted keys, no spaces and ASCII only: easy to reproduce with standard tools
(an auditor with jq and sha256sum can recompute a link), and stable across Python versions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

CHAIN_VERSION = 1

# The row fields a link commits to; the file's bytes are committed through ``sha256``.
LINKED_FIELDS = (
    "camera_id",
    "seq",
    "start_us",
    "end_us",
    "media_duration_us",
    "bytes",
    "frames",
    "codecs",
    "clock_offset_us",
    "sha256",
)


def genesis(camera_id: str) -> str:
    """A camera-specific start, so one camera's chain cannot be passed off as another's."""
    return hashlib.sha256(f"nvr/segment-chain/v{CHAIN_VERSION}/genesis/{camera_id}".encode()).hexdigest()


def canonical(row: Mapping[str, object]) -> bytes:
    missing = [f for f in LINKED_FIELDS if f not in row]
    if missing:
        raise KeyError(f"row lacks linked field(s) {missing}")
    return canonical_json({**{f: row[f] for f in LINKED_FIELDS}, "v": CHAIN_VERSION})


def canonical_json(body: Mapping[str, object]) -> bytes:
    """Sorted keys, no spaces, ASCII only: reproducible with ``jq -cS`` and stable across Python versions."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def link(prev_link: str, row: Mapping[str, object]) -> str:
    return hashlib.sha256(bytes.fromhex(prev_link) + canonical(row)).hexdigest()


@dataclass(frozen=True)
class ChainProblem:
    camera_id: str
    seq: int
    kind: str  # "chain_break" (link or prev_link wrong) or "seq_gap" (a number missing)
    detail: str


def verify_rows(camera_id: str, rows: list[Mapping[str, object]]) -> list[ChainProblem]:
    """Recompute a camera's chain from its rows in ``seq`` order; an empty list means it holds.

    Starts at genesis when the first row is seq 1; otherwise trusts the first row's ``prev_link`` (a retention
    deletion later anchors that on a tombstone).
    """
    problems: list[ChainProblem] = []
    expected_prev: str | None = genesis(camera_id)
    expected_seq = 1
    for i, row in enumerate(rows):
        seq = int(row["seq"])  # type: ignore[call-overload]
        if i == 0 and seq != 1:
            expected_prev, expected_seq = str(row["prev_link"]), seq
        if seq != expected_seq:
            problems.append(ChainProblem(camera_id, seq, "seq_gap", f"expected seq {expected_seq}, found {seq}"))
        if row["prev_link"] != expected_prev:
            problems.append(ChainProblem(camera_id, seq, "chain_break", "prev_link does not match the previous link"))
        recomputed = link(str(row["prev_link"]), row)
        if recomputed != row["link"]:
            problems.append(ChainProblem(camera_id, seq, "chain_break", "link does not match the row's contents"))
        expected_prev, expected_seq = str(row["link"]), seq + 1
    return problems
