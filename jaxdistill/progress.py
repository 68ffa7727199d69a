"""The one progress bar of jaxdistill (sampling, labelling, training, MD).

In a terminal it is a rich progress bar. When the output is not a terminal (a batch
job's log file, ``nohup``, a CI log) rich draws nothing until the end, which leaves a
long run silent for hours; there this bar prints a plain line per task every
``log_interval_s`` seconds instead (``teacher MD 6400/19200 (33 %) 6:13 elapsed,
~12:26 left``).

In Jupyter the bar is a live widget when ``ipywidgets`` is installed; without it rich
could only warn, so the bar then behaves as in a log (the plain lines and the final
bar), which does not flood a notebook cell.

Plain sinks (:func:`add_plain_sink`, what ``--log-file`` uses) get the same plain lines
while a live bar draws on the terminal; :func:`live_display_active` tells a stream that
copies the terminal (``cli.common.LogTee``) to leave the bar's frames out.
"""

from __future__ import annotations

import functools
import time
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: Seconds between plain progress lines when the output is not a terminal.
LOG_INTERVAL_S = 30.0

_plain_sinks: list[IO[str]] = []
_live_bars = 0


def add_plain_sink(stream: IO[str]) -> None:
    """Also write every bar's plain progress lines to ``stream`` (a log file)."""
    _plain_sinks.append(stream)


def remove_plain_sink(stream: IO[str]) -> None:
    """Stop writing plain progress lines to ``stream``."""
    if stream in _plain_sinks:
        _plain_sinks.remove(stream)


def live_display_active() -> bool:
    """Whether a bar is drawing live on a terminal now."""
    return _live_bars > 0


@functools.cache
def _has_ipywidgets() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class JaxdistillProgress(Progress):
    """rich ``Progress`` that also reports to non-terminal outputs, every so often."""

    def __init__(self, *columns: Any, log_interval_s: float = LOG_INTERVAL_S, **kwargs: Any):
        super().__init__(*columns, **kwargs)
        self.log_interval_s = log_interval_s
        self._plain = not self.console.is_terminal and not self.disable
        self._live = self.console.is_terminal and not self.disable
        self._last_line: dict[TaskID, float] = {}

    def start(self) -> None:
        global _live_bars
        super().start()
        _live_bars += self._live

    def stop(self) -> None:
        global _live_bars
        try:
            super().stop()
        finally:
            if self._live and _live_bars > 0:
                _live_bars -= 1
                self._live = False

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        self._maybe_print(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_print(task_id)

    def _maybe_print(self, task_id: TaskID) -> None:
        sinks = _plain_sinks if self._live else []
        if not self._plain and not sinks:
            return
        now = time.monotonic()
        last = self._last_line.setdefault(task_id, now)
        task = self._tasks[task_id]
        if now - last < self.log_interval_s and not task.finished:
            return
        if task.finished and last < 0:
            return  # the final line is already out
        self._last_line[task_id] = -1.0 if task.finished else now
        total = task.total
        done = f"{task.completed:g}"
        if total:
            done += f"/{total:g} ({100 * task.completed / total:.0f} %)"
        info = task.fields.get("info", "")
        line = (
            f"{task.description} {done}{' ' + info if info else ''}, "
            f"{_clock(task.elapsed)} elapsed, ~{_clock(task.time_remaining)} left"
        )
        if self._plain:
            self.console.print(line, markup=False, highlight=False)
        for sink in sinks:
            sink.write(line + "\n")
            sink.flush()


def progress_bar(
    console: Console | None = None,
    *,
    enabled: bool = True,
    info: bool = False,
    log_interval_s: float = LOG_INTERVAL_S,
) -> JaxdistillProgress:
    """A progress bar: description, bar, done/total, [info], elapsed, remaining.

    Args:
        console: where it draws (default: standard error).
        enabled: False gives a bar that shows nothing.
        info: add a free-text column from each task's ``info`` field (add tasks with
            ``info=""``).
        log_interval_s: seconds between plain lines on non-terminal outputs.

    Use it as a context manager (``with progress_bar() as bar: ...``).
    """
    columns = [
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *([TextColumn("{task.fields[info]}")] if info else []),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    console = console or Console(stderr=True)
    if console.is_jupyter and not _has_ipywidgets():
        # rich draws live in Jupyter only through ipywidgets; without them it would
        # only warn, so report as to a log file
        console = Console(file=console.file, force_jupyter=False, width=console.width)
    return JaxdistillProgress(
        *columns,
        console=console,
        disable=not enabled,
        log_interval_s=log_interval_s,
    )
