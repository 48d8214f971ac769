"""``nvr retention policy ...``: retention policies and camera assignment."""

from __future__ import annotations
