"""Ctrl-C and SIGTERM that end an MD run cleanly after its current chunk."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

logger = logging.getLogger("jaxdistill.md")


class StopOnSignal:
    """While active, Ctrl-C (SIGINT) and SIGTERM ask the MD loop to stop after its
    current chunk instead of killing it.

    A signal only sets ``requested``; the engines look at it once a chunk's samples are
    checked and written, so the trajectory, the thermo log and the summary end at the
    same ``steps_done`` (an exception raised mid-write could leave half a frame). A
    second signal stops at once (KeyboardInterrupt). Handlers can only be installed
    from the main thread; elsewhere, or when not ``enabled``, nothing changes (pipeline
    stages keep the plain interrupt: a cut run must not look finished).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning(
            "%s: stopping after the current chunk (again to stop at once)",
            signal.Signals(signum).name,
        )

    def __enter__(self) -> StopOnSignal:
        if self.enabled:
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
