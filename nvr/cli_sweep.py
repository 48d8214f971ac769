"""``nvr retention sweep``: the sweeper on demand."""

from __future__ import annotations
