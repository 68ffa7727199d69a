"""The one progress bar of jaxdistill (sampling, labelling, training, MD).

In a terminal it is a rich progress bar. When the output is not a terminal (a batch
job's log file, ``nohup``, a CI log) rich draws nothing until the end, which leaves a
long run silent for hours; there this bar prints a plain line per task every
``log_interval_s`` seconds instead (``teacher MD 6400/19200 (33 %) 6:13 elapsed,
~12:26 left``).
"""

from __future__ import annotations

import time
from typing import Any

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
        self._last_line: dict[TaskID, float] = {}

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        self._maybe_print(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_print(task_id)

    def _maybe_print(self, task_id: TaskID) -> None:
        if not self._plain:
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
        self.console.print(
            f"{task.description} {done}{' ' + info if info else ''}, "
            f"{_clock(task.elapsed)} elapsed, ~{_clock(task.time_remaining)} left",
            markup=False,
            highlight=False,
        )


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
    return JaxdistillProgress(
        *columns,
        console=console or Console(stderr=True),
        disable=not enabled,
        log_interval_s=log_interval_s,
    )
