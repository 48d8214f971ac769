"""Per-camera hash chains over segment rows.

``link = H(prev_link ‖ canonical(row))``, with ``prev_link`` of a camera's first segment being the camera's
genesis value and ``H`` the row's own ``hash_alg`` (SHA-256 or SM3, integrity.suites), so a chain that crosses a
suite change verifies each link with the algorithm that made it. Any edited, removed, inserted or reordered row
changes every later link, so a verifier that recomputes the chain from the rows, and compares it with a signed
checkpoint, names the first bad one.

The canonical encoding is JSON with sorted keys, no spaces and ASCII only: easy to reproduce with standard tools
(an auditor with jq and sha256sum can recompute a link), and stable across Python versions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from integrity import suites

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


# Committed only when set, so rows made before they existed (SHA-256, not encrypted) keep their links: a row's
# ``hash_alg`` when it is not SHA-256, and an encrypted segment's plaintext digest and cipher. ``sha256`` then
# holds the digest of the stored (encrypted) bytes, with ``hash_alg``; the name is kept from version 1.
OPTIONAL_FIELDS = ("hash_alg", "plain_digest", "encryption")


def row_hash_alg(row: Mapping[str, object]) -> str:
    return suites.check_hash_alg(str(row.get("hash_alg") or suites.DEFAULT_HASH))


def genesis(camera_id: str, hash_alg: str = suites.DEFAULT_HASH) -> str:
    """A camera-specific start, so one camera's chain cannot be passed off as another's."""
    return suites.digest(hash_alg, f"nvr/segment-chain/v{CHAIN_VERSION}/genesis/{camera_id}".encode())


def canonical(row: Mapping[str, object]) -> bytes:
    missing = [f for f in LINKED_FIELDS if f not in row]
    if missing:
        raise KeyError(f"row lacks linked field(s) {missing}")
    body: dict[str, object] = {f: row[f] for f in LINKED_FIELDS}
    if row_hash_alg(row) != suites.DEFAULT_HASH:
        body["hash_alg"] = row["hash_alg"]
    for f in ("plain_digest", "encryption"):
        if row.get(f) is not None:
            body[f] = row[f]
    return canonical_json({**body, "v": CHAIN_VERSION})


def canonical_json(body: Mapping[str, object]) -> bytes:
    """Sorted keys, no spaces, ASCII only: reproducible with ``jq -cS`` and stable across Python versions."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def link(prev_link: str, row: Mapping[str, object]) -> str:
    return suites.digest(row_hash_alg(row), bytes.fromhex(prev_link) + canonical(row))


@dataclass(frozen=True)
class ChainProblem:
    camera_id: str
    seq: int
    kind: str  # "chain_break" (link or prev_link wrong) or "seq_gap" (a number missing)
    detail: str


def verify_rows(camera_id: str, rows: list[Mapping[str, object]]) -> list[ChainProblem]:
    """Recompute a camera's chain from its rows in ``seq`` order; an empty list means it holds.

    Starts at genesis when the first row is seq 1; otherwise trusts the first row's ``prev_link``. Once retention
    has deleted segments, :func:`verify_with_tombstones` checks the whole chain, tombstones included.
    """
    problems: list[ChainProblem] = []
    expected_prev: str | None = genesis(camera_id, row_hash_alg(rows[0]) if rows else suites.DEFAULT_HASH)
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


def verify_with_tombstones(
    camera_id: str, rows: Sequence[Mapping[str, object]], tombstones: Sequence[Mapping[str, object]]
) -> list[ChainProblem]:
    """Recompute a camera's chain across the segments retention deleted; an empty list means it holds.

    ``rows`` are segment rows and ``tombstones`` stand-ins for deleted runs (``first_seq``, ``last_seq``,
    ``prev_link``: the link the run continued from, ``last_link``: the link of its last segment). Walked together in
    ``seq`` order from seq 1 at genesis: numbers must be continuous, each element must continue from the previous
    element's link (a tombstone's ``last_link``), and each row's link must recompute from its contents. Unlike
    :func:`verify_rows`, nothing is trusted: rows missing at the start without a tombstone are a ``seq_gap`` and a
    ``chain_break``, and a tombstone whose links do not join is a ``chain_break`` naming it.
    """
    elements = sorted(
        [(int(r["seq"]), 0, r) for r in rows] + [(int(t["first_seq"]), 1, t) for t in tombstones],  # type: ignore[call-overload]
        key=lambda e: (e[0], e[1]),
    )
    problems: list[ChainProblem] = []
    first_alg = suites.DEFAULT_HASH
    if elements and not elements[0][1]:
        first_alg = row_hash_alg(elements[0][2])
    elif elements:
        # A tombstone keeps links, not the algorithm of the rows it stands for: its start is the genesis of
        # whichever algorithm the camera's first segment used.
        first_alg = next(
            (a for a in suites.HASH_ALGS if genesis(camera_id, a) == elements[0][2]["prev_link"]), first_alg
        )
    expected_prev, expected_seq, prev_name = genesis(camera_id, first_alg), 1, "genesis"
    for seq, is_tombstone, el in elements:
        if is_tombstone:
            last = int(el["last_seq"])  # type: ignore[call-overload]
            name = f"tombstone seq {seq}..{last}"
            if seq != expected_seq:
                problems.append(ChainProblem(camera_id, seq, "seq_gap", f"expected seq {expected_seq}, {name} found"))
            if el["prev_link"] != expected_prev:
                problems.append(
                    ChainProblem(camera_id, seq, "chain_break", f"{name}: prev_link does not match the {prev_name}")
                )
            expected_prev, expected_seq, prev_name = str(el["last_link"]), last + 1, f"last link of {name}"
            continue
        if seq != expected_seq:
            problems.append(ChainProblem(camera_id, seq, "seq_gap", f"expected seq {expected_seq}, found {seq}"))
        if el["prev_link"] != expected_prev:
            problems.append(ChainProblem(camera_id, seq, "chain_break", f"prev_link does not match the {prev_name}"))
        if link(str(el["prev_link"]), el) != el["link"]:
            problems.append(ChainProblem(camera_id, seq, "chain_break", "link does not match the row's contents"))
        expected_prev, expected_seq, prev_name = str(el["link"]), seq + 1, f"link of seq {seq}"
    return problems
