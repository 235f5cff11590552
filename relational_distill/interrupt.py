"""Ctrl-C and SIGTERM as one clean stop: both raise :class:`Interrupted` in the main thread, so ``finally``
blocks and atomic writes finish their cleanup and each command says what it leaves behind
(docs/reliability.md)."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A stop asked for by a signal; ``detail`` says what the interrupted command leaves behind."""

    def __init__(self, signum: int, detail: str = "") -> None:
        super().__init__(signum)
        self.signum, self.detail = signum, detail

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def _raise(signum: int, frame) -> None:
    raise Interrupted(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def ignore_signals_in_worker() -> None:
    """Initializer of worker processes: the parent stops them (Ctrl-C reaches the whole process group, and
    the parent then terminates its pool), so they ignore SIGINT and die at once on SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
