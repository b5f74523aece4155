"""Stopping a render politely: SIGINT, SIGTERM and SIGHUP all mean "finish this chunk, keep what you have".

A terminal closing (SIGHUP), `timeout` or `docker stop` (SIGTERM) and a cluster preempting a job deserve
the same care as Ctrl-C: the render finishes the chunk it is on (state is only consistent between
chunks), saves a resume checkpoint, keeps NAME.partial.mp4 and exits with 128 + the signal's number.
A second Ctrl-C while stopping stops at once (the partial file is still kept, the last checkpoint stays).
"""

from __future__ import annotations

import contextlib
import os
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
                if signal.getsignal(s) is signal.SIG_IGN:
                    continue  # `nohup` ignores SIGHUP, a background job SIGINT: they stay ignored
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


# ------------------------------------------------------------------------------------------------
# Outside a render's chunk loop (parsing, loading, encoding, printing the result)


class Stopped(KeyboardInterrupt):
    """A command was stopped by a signal outside a render's StopRequest; `exit_code` is 128 + its number."""

    def __init__(self, signum: int):
        super().__init__(name(signum))
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)


def exit_code_of(exc: BaseException) -> int:
    """128 + signal for a Stopped, 130 for a plain KeyboardInterrupt (Ctrl-C without our handler)."""
    return getattr(exc, "exit_code", exit_code(signal.SIGINT))


@contextlib.contextmanager
def stop_on_signals(say: Callable[[str], None] = print):
    """For a whole command: SIGINT/SIGTERM/SIGHUP raise `Stopped` at once (before a render starts there is
    nothing to keep; a render's own StopRequest takes over inside its chunk loop). A second signal while
    stopping is only acknowledged — no shutdown traceback; a third quits at once (the next render to the same
    output removes the temporaries this leaves; their names carry our PID). Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def tell(text: str) -> None:
        with contextlib.suppress(Exception):  # the terminal may be gone (SIGHUP): never fail while stopping
            say(text)

    def handler(signum, frame):
        received.append(signum)
        if len(received) == 1:
            tell(f"stopping ({name(signum)})…")
            raise Stopped(signum)
        if len(received) == 2:
            tell("still stopping (signal again to quit at once)")
            return
        os._exit(exit_code(received[0]))

    previous = {}
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is signal.SIG_IGN:
            continue
        with contextlib.suppress(OSError, ValueError):
            previous[signum] = signal.signal(signum, handler)
    try:
        yield received
    finally:
        for signum, old in previous.items():
            with contextlib.suppress(OSError, ValueError):
                signal.signal(signum, old)
