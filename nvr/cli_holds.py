"""``nvr retention hold ...``: evidence holds (read-only here; placing and releasing need a person, via the API)."""

from __future__ import annotations
