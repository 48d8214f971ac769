"""Health details and Prometheus metrics (storage_full and other alarms)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["system"])
