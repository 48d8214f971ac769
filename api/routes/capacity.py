"""Capacity forecast per volume and camera."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["capacity"])
