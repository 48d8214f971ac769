"""The one shape of the server's background work: a daemon thread that repeats a step until told to stop.

The retention sweeper, the checkpoint scheduler, the scrubber and the export runner are each a
:class:`BackgroundLoop`: :meth:`step` does one round and returns how many seconds to wait before the next; a
:meth:`wake` ends the wait early; :meth:`stop` ends the loop after the current step. A step that raises is handed
to :meth:`failed` (log it, say when to retry) and the thread goes on: background work must never die silently
while the server keeps serving. :meth:`wait_passes` lets callers and tests block until rounds have finished.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class BackgroundLoop:
    thread_name = "background"
    retry_seconds = 60.0

    def __init__(self) -> None:
        self.passes = 0
        """Rounds finished (whether their step succeeded or failed)."""
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._done = threading.Condition()
        self._thread: threading.Thread | None = None

    def step(self) -> float:
        """One round; returns the seconds until the next (0: at once)."""
        raise NotImplementedError

    def failed(self, exc: Exception) -> float:
        """A step raised: log it and return the seconds until the retry."""
        log.exception("%s failed; retrying in %g s", self.thread_name, self.retry_seconds)
        return self.retry_seconds

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait_passes(self, n: int, timeout: float) -> bool:
        """Block until at least ``n`` rounds have finished; False on timeout."""
        with self._done:
            return self._done.wait_for(lambda: self.passes >= n, timeout)

    gate: Callable[[], bool] | None = None
    """When set (nvr.cluster: this node holds the job's lease), a round runs only while it says True; otherwise
    the loop looks again after ``gate_retry_seconds``. So a once-per-cluster job runs on one node at a time."""
    gate_retry_seconds = 2.0

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                if self.gate is not None and not self.gate():
                    self._wake.wait(self.gate_retry_seconds)
                    continue
                wait = self.step()
            except Exception as exc:
                wait = self.failed(exc)
            with self._done:
                self.passes += 1
                self._done.notify_all()
            if wait > 0:
                self._wake.wait(wait)
