"""Drive the GStreamer RTSP test server (``gst_rtsp_server.py``) from the venv's pytest.

The server needs PyGObject + gst-rtsp-server, which exist only for Debian's system Python
(``/usr/bin/python3``), so it always runs as a separate process; this module is plain stdlib
and importable from any interpreter.

    with GstRtspServer() as server:
        url = server.url("/h264")          # rtsp://127.0.0.1:<port>/h264
        server.restart("/restart")         # camera "reboot": its sessions are dropped now
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import IO, Self

SYSTEM_PYTHON = Path("/usr/bin/python3")
SERVER_SCRIPT = Path(__file__).resolve().with_name("gst_rtsp_server.py")

#: Mounts served by the script, with what a client should find there.
MOUNTS: dict[str, str] = {
    "/h264": "H.264 640x360 25 fps, 1 s GOP, no B-frames",
    "/h265": "H.265 640x360 25 fps, 1 s GOP",
    "/h264aac": "H.264 + AAC-LC 48 kHz mono",
    "/h264b": "H.264 with B-frames",
    "/restart": "H.264; each session is dropped `restart_after` s after it starts (camera reboot)",
    "/audio": "AAC only (no video stream)",
    "/mjpeg": "Motion-JPEG (unsupported codec for the recorder)",
}


def default_media_dir() -> Path:
    """Cache of pre-encoded clips, shared by all runs/checkouts (file names carry a param hash)."""
    override = os.environ.get("GST_MEDIA_DIR")
    if override:
        return Path(override)
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache_home / "nvr-tests" / "gst-media"


@functools.cache
def gst_unavailable_reason() -> str | None:
    """Why the GStreamer RTSP server cannot run on this machine, or None if it can.

    Runs ``/usr/bin/python3 gst_rtsp_server.py --check`` once per process: the script itself
    knows which typelibs, GStreamer elements and ffmpeg encoders it needs.
    """
    if not SYSTEM_PYTHON.exists():
        return f"{SYSTEM_PYTHON} not found (GStreamer's Python bindings come from Debian's python3-gi)"
    try:
        proc = subprocess.run(
            [str(SYSTEM_PYTHON), str(SERVER_SCRIPT), "--check"],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"could not run {SYSTEM_PYTHON} {SERVER_SCRIPT.name} --check: {exc}"
    if proc.returncode == 0:
        return None
    detail = (proc.stdout.strip() or proc.stderr.strip() or f"exit status {proc.returncode}").splitlines()
    return detail[-1] if detail else f"exit status {proc.returncode}"


class GstRtspServerError(RuntimeError):
    pass


class GstRtspServer:
    """A running ``gst_rtsp_server.py`` process; use as a context manager or start()/stop().

    ``restart_after``: seconds after which every ``/restart`` session is torn down (0 = never).
    ``ready_timeout`` is generous because the first run on a machine encodes the clips (~5 s).
    """

    def __init__(
        self,
        media_dir: Path | None = None,
        *,
        host: str = "127.0.0.1",
        restart_after: float = 6.0,
        ready_timeout: float = 120.0,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.media_dir = media_dir or default_media_dir()
        self.host = host
        self.restart_after = restart_after
        self.ready_timeout = ready_timeout
        self.extra_env = extra_env or {}
        self._proc: subprocess.Popen[str] | None = None
        self._port: int | None = None
        self._stdout: queue.Queue[str | None] = queue.Queue()
        self._stderr: deque[str] = deque(maxlen=200)  # tail, for error messages
        self._lock = threading.Lock()  # one command/reply exchange at a time
        self._pumps: list[threading.Thread] = []

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Self:
        if self._proc is not None:
            raise GstRtspServerError("already started")
        reason = gst_unavailable_reason()
        if reason:
            raise GstRtspServerError(reason)
        cmd = [
            str(SYSTEM_PYTHON),
            str(SERVER_SCRIPT),
            "--host", self.host,
            "--port", "0",
            "--media-dir", str(self.media_dir),
            "--restart-after", str(self.restart_after),
        ]  # fmt: skip
        # The system interpreter must not pick up the venv (PYTHONHOME/PYTHONPATH from an
        # activated venv would break its stdlib or shadow gi).
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
        env.update(self.extra_env)
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
        )
        assert self._proc.stdout and self._proc.stderr
        # Both pipes are drained by threads so the server can never block on a full pipe.
        self._pumps = [
            threading.Thread(target=self._pump_stdout, args=(self._proc.stdout,), daemon=True),
            threading.Thread(target=self._pump_stderr, args=(self._proc.stderr,), daemon=True),
        ]
        for pump in self._pumps:
            pump.start()
        try:
            line = self._read_line(self.ready_timeout, "READY")
            if not line.startswith("READY "):
                raise GstRtspServerError(f"unexpected first line {line!r}{self._stderr_tail()}")
            self._port = int(line.split()[1])
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None and proc.stdin:
                proc.stdin.write("quit\n")
                proc.stdin.flush()
        except OSError:
            pass  # already gone
        finally:
            if proc.stdin:
                with contextlib.suppress(OSError):
                    proc.stdin.close()  # EOF also makes the server exit
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # The pumps see EOF once the process is gone; close the pipes only after they are done
        # (pytest turns the ResourceWarning of an unclosed pipe into an error).
        for pump in self._pumps:
            pump.join(timeout)
        for pipe in (proc.stdout, proc.stderr):
            if pipe:
                pipe.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- API -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None or self._proc is None:
            raise GstRtspServerError("server not running")
        return self._port

    def url(self, mount: str) -> str:
        if mount not in MOUNTS:
            raise ValueError(f"unknown mount {mount!r}; known: {', '.join(MOUNTS)}")
        return f"rtsp://{self.host}:{self.port}{mount}"

    def restart(self, mount: str, downtime: float = 0.0) -> int:
        """Tear down every session of `mount` now, like a camera reboot; returns how many.

        Clients see their TCP connection closed. With `downtime` > 0 the mount answers
        404 Not Found for that many seconds before accepting sessions again.
        """
        if mount not in MOUNTS:
            raise ValueError(f"unknown mount {mount!r}")
        reply = self._command(f"restart {mount} {downtime:g}")
        return int(reply.split()[-1])

    def ping(self) -> None:
        self._command("ping")

    def stderr_tail(self) -> str:
        return "\n".join(self._stderr)

    # -- internals -----------------------------------------------------------------------

    def _command(self, command: str, timeout: float = 10.0) -> str:
        with self._lock:
            proc = self._proc
            if proc is None or proc.stdin is None or proc.poll() is not None:
                raise GstRtspServerError(f"server not running{self._stderr_tail()}")
            proc.stdin.write(command + "\n")
            proc.stdin.flush()
            reply = self._read_line(timeout, command)
        if not reply.startswith("OK"):
            raise GstRtspServerError(f"{command!r} failed: {reply}{self._stderr_tail()}")
        return reply

    def _read_line(self, timeout: float, waiting_for: str) -> str:
        try:
            line = self._stdout.get(timeout=timeout)
        except queue.Empty:
            raise GstRtspServerError(
                f"no reply to {waiting_for!r} from gst_rtsp_server.py within {timeout:g}s{self._stderr_tail()}"
            ) from None
        if line is None:
            self._stdout.put(None)  # keep the EOF marker for later readers
            # Give the stderr pump a moment to collect the traceback that explains the exit.
            time.sleep(0.2)
            raise GstRtspServerError(
                f"gst_rtsp_server.py exited while waiting for {waiting_for!r}{self._stderr_tail()}"
            )
        return line

    def _pump_stdout(self, stream: IO[str]) -> None:
        for line in stream:
            self._stdout.put(line.rstrip("\n"))
        self._stdout.put(None)  # EOF marker

    def _pump_stderr(self, stream: IO[str]) -> None:
        for line in stream:
            self._stderr.append(line.rstrip("\n"))

    def _stderr_tail(self) -> str:
        tail = self.stderr_tail()
        return f"\n--- gst_rtsp_server.py stderr ---\n{tail}" if tail else ""
