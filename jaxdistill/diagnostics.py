"""Run-time diagnostics: counting XLA compilations (MD must compile once per shape)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax.monitoring

_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompilationCounter:
    """Number of XLA backend compilations seen while it is active (``.count``)."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0

    def _listener(self, event: str, duration_secs: float, **_: object) -> None:
        if event == _BACKEND_COMPILE_EVENT:
            self.count += 1
            self.seconds += duration_secs


@contextlib.contextmanager
def count_compilations() -> Iterator[CompilationCounter]:
    """Count every XLA compilation in the block, in any jitted function.

    Example:
        >>> with count_compilations() as compiled:
        ...     atoms.get_forces()
        >>> compiled.count
    """
    counter = CompilationCounter()
    jax.monitoring.register_event_duration_secs_listener(counter._listener)
    try:
        yield counter
    finally:
        jax.monitoring.unregister_event_duration_listener(counter._listener)
