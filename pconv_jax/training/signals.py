"""The signals a training run acts on between steps, each noted by a handler while a `with`
block runs (main thread only; the previous handler is back afterwards):

- SIGTERM (`Sigterm`), a preemption notice: the loop saves, then stops with status 143;
- Ctrl-C (`CtrlC`): the loop stops without a final save; a second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import signal
import threading

from absl import logging


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class Sigterm:
    """SIGTERM sets `received` instead of killing the process (the loop then saves and stops)."""

    def __init__(self):
        self._event, self._previous = threading.Event(), None

    @property
    def received(self) -> bool:
        return self._event.is_set()

    def __enter__(self) -> Sigterm:
        if _in_main_thread():
            self._previous = signal.signal(signal.SIGTERM, lambda *_: self._event.set())
        return self

    def __exit__(self, *exc_info) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


class CtrlC:
    """Ctrl-C (SIGINT) noted and acted on between steps (`check`), a second one at once.

    A KeyboardInterrupt raised wherever the main thread happens to be can land in a finalizer
    (e.g. a batch's shared memory being released), where Python only prints it and the run goes
    on; between steps it always stops the run.
    """

    def __init__(self):
        self.pressed, self._previous = False, None

    def __enter__(self) -> CtrlC:
        if _in_main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._note)
        return self

    def _note(self, signum, frame) -> None:
        del signum, frame
        self.pressed = True
        signal.signal(signal.SIGINT, self._previous)  # the next Ctrl-C interrupts at once

    def __exit__(self, *exc_info) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def check(self, step: int) -> None:
        """KeyboardInterrupt if Ctrl-C was pressed (before step `step`)."""
        if self.pressed:
            logging.warning("Ctrl-C: stopped before step %d without saving", step)
            raise KeyboardInterrupt
