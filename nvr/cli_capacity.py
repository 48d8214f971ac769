"""``nvr capacity``: the capacity forecast."""

from __future__ import annotations
