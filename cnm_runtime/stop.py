"""Ctrl-C and SIGTERM for cnm-run: always the documented exit status (130, 143), never an abort.

An exception raised at an arbitrary point (what Python does with Ctrl-C) can land inside h5py's lock, a
thread pool's shutdown or Ray's start, and the process may then hang, abort or crash on its way out. So the
handlers only ask: while the run grounds, the first signal sets ``requested`` and the run stops after the
result at hand, writes what it has (metrics included) and exits with 128 + the signal's number; a second
signal, or one before grounding starts (nothing is written yet), ends the process at once with that status.
Lines already written are on disk either way: each is flushed as it is written.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Installs the handlers for its ``with`` block (in the main thread); ``grounding()`` marks the stretch in
    which a first signal asks the run to stop rather than ending the process."""

    def __init__(self) -> None:
        self.requested: int | None = None  # the signal that asked the run to stop
        self._grounding = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for number in SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    @property
    def exit_status(self) -> int | None:
        return None if self.requested is None else 128 + self.requested

    def grounding(self, on: bool = True) -> None:
        self._grounding = on

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self._grounding and self.requested is None:
            self.requested = number
            return
        sys.stderr.write(f"cnm-run: {signal.Signals(number).name}: stopping now\n")
        sys.stderr.flush()
        os._exit(128 + number)
