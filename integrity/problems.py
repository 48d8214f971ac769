"""One problem an integrity check found: its kind (a stable name, docs/integrity/verify.md), what it concerns and
where in the footage it lies. Shared by ``nvr verify``, the scrubber, playback and every checker."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from nvr.clock import iso


@dataclass(frozen=True)
class Problem:
    kind: str
    camera_id: str | None
    seq: int | None
    at_us: int | None
    """Footage time the problem concerns (a segment's start), when there is one."""
    subject: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "at": iso(self.at_us)}

    def line(self) -> str:
        return f"{self.kind:<14} {self.camera_id or '-':<16} {iso(self.at_us) or '-':<27} {self.subject}: {self.detail}"

    @property
    def key(self) -> tuple[str, str | None, int | None, str]:
        return (self.kind, self.camera_id, self.seq, self.subject)
