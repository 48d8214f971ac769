"""Retention policies: list, create, change, assign to cameras."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["retention"])
