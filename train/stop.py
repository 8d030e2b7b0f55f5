"""Stop signals: SIGTERM or Ctrl-C asks a run to stop at its next safe point.

A training loop runs inside `StopSignals()`. The first SIGTERM or SIGINT sets
`requested`; the loop reads it at each step boundary and saves a checkpoint there.
Code that can run a long time between two boundaries (the data stream reading and
skipping records, the loops of make-shards) calls `check()` at its own safe points: a
place where its state is whole, so a checkpoint taken after the raise is a true one.
`check()` raises StopRequested there. A blocking wait that holds no state of its own
(the main process waiting on DataLoader workers) runs inside `interruptible()`, where
the first signal raises StopRequested at once. A second signal raises
KeyboardInterrupt wherever the process is: the way out when a safe point never comes.

Handlers are process-wide, so only the main thread installs them; forked DataLoader
workers inherit them, and a worker's StopRequested reaches the main process as the
same exception type (torch re-raises worker errors there).
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager

__all__ = ["StopRequested", "StopSignals", "check", "interruptible"]


class StopRequested(Exception):
    """Raised at a safe point after SIGTERM or SIGINT; a loop catches it, checkpoints and returns.

    An Exception (not a BaseException) so torch carries it out of a DataLoader worker."""


_active: StopSignals | None = None


class StopSignals:
    """Context manager: SIGTERM/SIGINT set `requested` (a second one raises KeyboardInterrupt)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._old: dict[int, object] = {}
        self._pid = os.getpid()
        self._waiting = False  # inside interruptible(): raise at once

    def __enter__(self) -> StopSignals:
        global _active
        try:
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        except ValueError:  # not the main thread: no handlers, the loop runs to its end
            self._old = {}
        self._outer, _active = _active, self
        return self

    def __exit__(self, *exc) -> None:
        global _active
        for s, old in self._old.items():
            signal.signal(s, old)
        _active = self._outer

    def _handle(self, signum, frame) -> None:
        if self.requested:  # the second signal: stop now, whatever is running
            raise KeyboardInterrupt
        self.requested, self.signal_name = True, signal.Signals(signum).name
        if os.getpid() == self._pid:  # a DataLoader worker stays quiet
            print(f"\n{self.signal_name}: stopping at the next safe point with a checkpoint "
                  "(send it again to abort now)", file=sys.stderr, flush=True)
        if self._waiting:
            raise StopRequested(f"{self.signal_name} while waiting for data")


def check() -> None:
    """A safe point: raise StopRequested if a stop signal arrived (a no-op outside StopSignals)."""
    if _active is not None and _active.requested:
        raise StopRequested(f"{_active.signal_name or 'stop'} requested")


@contextmanager
def interruptible():
    """A blocking wait that holds no state: inside it the first signal raises StopRequested."""
    active = _active
    if active is None:
        yield
        return
    check()
    active._waiting = True
    try:
        yield
    finally:
        active._waiting = False
