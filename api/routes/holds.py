"""Evidence holds: place, list per camera, two-person release."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["holds"])
