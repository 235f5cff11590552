"""Ctrl-C and SIGTERM as one clean stop: both raise :class:`Interrupted` in the main thread, so ``finally``
blocks and atomic writes finish their cleanup and each command says what it leaves behind
(docs/reliability.md).

Python drops an exception raised by a signal handler while it runs certain callbacks (an at-fork hook, a
``__del__``), so the handler also records the request, raises nothing while the process forks (a DataLoader
starting its workers: an exception there would be dropped and could leave a lock held), and long loops call
:func:`check` at each step: a stop asked for is never lost."""
from __future__ import annotations

import os
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


_requested: list[int] = []  # signals received since stop_on_signals() began
_deferring = [0]            # forks in progress and deferred() blocks: while > 0 a stop is recorded, not raised


def _defer(step: int) -> None:
    _deferring[0] += step  # a plain counter: the at-fork hooks may take no lock


os.register_at_fork(before=lambda: _defer(1), after_in_parent=lambda: _defer(-1),
                    after_in_child=lambda: _defer(-1))


def _raise(signum: int, frame) -> None:
    _requested.append(signum)
    if not _deferring[0]:
        raise Interrupted(signum)


@contextmanager
def deferred() -> Iterator[None]:
    """Within the block a stop is recorded, not raised; the next :func:`check` raises it. For a step that must not
    be cut in half: receiving a DataLoader batch fetches its tensors' file descriptors from the worker over a
    connection, and an exception in the middle makes the worker print a traceback. A fork is deferred the same
    way."""
    _defer(1)
    try:
        yield
    finally:
        _defer(-1)


def check() -> None:
    """Raise :class:`Interrupted` if a stop was asked for (call it once per step of a long loop)."""
    if _requested:
        raise Interrupted(_requested[0])


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in STOP_SIGNALS}
    _requested.clear()
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _requested.clear()


def ignore_signals_in_worker() -> None:
    """Initializer of worker processes: the parent stops them (Ctrl-C reaches the whole process group, and
    the parent then terminates its pool), so they ignore SIGINT and die at once on SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
