"""Stopping a render politely: SIGINT, SIGTERM and SIGHUP all mean "finish this chunk, keep what you have".

A terminal closing (SIGHUP), `timeout` or `docker stop` (SIGTERM) and a cluster preempting a job deserve
the same care as Ctrl-C: the render finishes the chunk it is on (state is only consistent between
chunks), saves a resume checkpoint, keeps NAME.partial.mp4 and exits with 128 + the signal's number.
A second Ctrl-C while stopping stops at once (the partial file is still kept, the last checkpoint stays).
"""

from __future__ import annotations

import signal
import threading
from typing import Callable

STOP_SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None)


class StopRequest:
    """While active (a `with` block in the main thread), turns stop signals into a flag read between chunks."""

    def __init__(self, on_request: Callable[[int], None] | None = None):
        self.signum: int | None = None
        self._on_request = on_request
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int = signal.SIGINT) -> None:
        """Ask the render to stop at the next chunk boundary (what a signal does; also for tests and hooks)."""
        if self.signum is None:
            self.signum = signum
            if self._on_request:
                self._on_request(signum)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.request(signum)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                try:
                    self._previous[s] = signal.signal(s, self._handle)
                except (ValueError, OSError):  # not settable here
                    pass
        return self

    def __exit__(self, *exc) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous.clear()


def exit_code(signum: int | None) -> int:
    """What a shell reports for a process stopped by `signum` (130 for Ctrl-C)."""
    return 128 + int(signum or signal.SIGINT)


def name(signum: int | None) -> str:
    try:
        return signal.Signals(signum or signal.SIGINT).name
    except ValueError:
        return f"signal {signum}"
