"""Turning what FFmpeg and the stream do into reasons a person can act on.

FFmpeg's messages carry the URL, and the URL may carry credentials: reasons are built from the error's kind and
errno only, never from its text, and any text that must be kept goes through ``redact_text``.
"""

from __future__ import annotations

import errno

import av

from nvr.registry import redact_text


class CameraFault(Exception):
    """A stream that can be opened but not recorded (no video, unsupported codec)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def classify(exc: BaseException) -> tuple[str, str]:
    """(code, human reason) for an exception raised while opening or reading a camera."""
    if isinstance(exc, CameraFault):
        return exc.code, exc.message
    name = type(exc).__name__
    err = getattr(exc, "errno", None)
    if name == "HTTPUnauthorizedError":
        return "unauthorized", "the camera refused the credentials (401 Unauthorized)"
    if name == "HTTPForbiddenError":
        return "forbidden", "the camera refused access (403 Forbidden)"
    if name == "HTTPNotFoundError":
        return "stream_not_found", "the camera has no stream at that path (404 Not Found)"
    if isinstance(exc, ConnectionRefusedError) or err == errno.ECONNREFUSED:
        return "unreachable", "connection refused (camera off, or wrong port)"
    if err in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN):
        return "unreachable", "no route to the camera's host"
    if isinstance(exc, TimeoutError) or err == errno.ETIMEDOUT or name == "ExitError":
        return "timeout", "the camera did not answer in time"
    if err == errno.ENOSPC:
        return "storage_full", "no space left on the volume"
    if err == errno.ECONNRESET or isinstance(exc, ConnectionResetError):
        return "disconnected", "the camera closed the connection"
    if err == errno.EIO or (name == "OSError" and err is None):
        return "stream_error", "input/output error on the stream"
    if isinstance(exc, av.error.InvalidDataError):
        return "stream_error", "the camera sent data FFmpeg could not parse"
    if isinstance(exc, av.FFmpegError):
        text = getattr(exc, "strerror", None) or name
        return "stream_error", redact_text(f"{text}")
    return "internal_error", redact_text(f"{name}: {exc}")
