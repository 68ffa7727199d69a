"""What several commands share: ``--device`` (where JAX runs) and ``--log-file`` (a
plain-text copy of what a command prints).

``--device cpu|gpu|auto`` (``md``, ``train``, ``evaluate``): before JAX starts, sets
``JAX_PLATFORMS`` (``cpu``, or ``cuda,cpu``: the CPU stays available for small
structures), so a GPU is not even initialised for ``cpu``; when JAX is already running
(a notebook, tests) it makes the device JAX's default instead. ``auto`` leaves JAX's
choice (a GPU when there is one) and an existing ``JAX_PLATFORMS`` alone.

``--log-file PATH`` (accepted anywhere on the line, for every command; meant for the
long ones: distill, sample, label, train, md): everything the command prints to
standard output and standard error is also appended to PATH without colours or
control codes. A live progress bar stays on the terminal; the log gets its plain
progress lines instead (``teacher MD 6400/19200 (33 %) ...``, every
``progress.LOG_INTERVAL_S`` seconds; :func:`jaxdistill.progress.add_plain_sink`).
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import IO, Any

from jaxdistill.progress import add_plain_sink, live_display_active, remove_plain_sink
from jaxdistill.runtime import _xla_started

__all__ = ["DEVICES", "LogTee", "select_device", "start_log_file"]

DEVICES = ("auto", "cpu", "gpu")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[=>]")


def select_device(device: str, flag: str = "--device") -> list[Any] | None:
    """Make JAX run on ``device`` ("auto", "cpu" or "gpu").

    Returns:
        The devices of that platform (for data-parallel training), or None for "auto".

    Raises:
        ValueError: an unknown name, or no such device (naming the flag).
    """
    device = device.lower()
    if device not in DEVICES:
        raise ValueError(f"{flag} must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "auto":
        return None
    if not _xla_started():
        # before jax starts: an unwanted GPU backend is then never initialised
        os.environ["JAX_PLATFORMS"] = "cpu" if device == "cpu" else "cuda,cpu"
    import jax

    try:
        devices = jax.devices(device)
    except RuntimeError as error:
        text = " ".join(str(error).split())[:200]
        raise ValueError(f"{flag} {device}: JAX finds no {device.upper()} here ({text})") from None
    # this process's own device (in a multi-process run the list spans every process)
    jax.config.update("jax_default_device", jax.local_devices(backend=device)[0])
    return list(devices)


class LogTee:
    """A text stream that writes to ``stream`` and, without ANSI codes, to ``log``.

    While a live progress bar draws on a terminal its frames are not copied (the bar
    writes plain lines to the log itself).
    """

    def __init__(self, stream: IO[str], log: IO[str]) -> None:
        self._stream = stream
        self._log = log

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        if not live_display_active() and not self._log.closed:
            clean = _ANSI.sub("", text).replace("\r", "")
            if clean:
                self._log.write(clean)
                self._log.flush()
        return written if written is not None else len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def start_log_file(path: Path, argv: list[str] | None = None):
    """Tee standard output and error into ``path`` (appended); returns a function
    that stops it (the CLI calls it when the command ends).

    Raises:
        OSError: the file cannot be opened (named).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"--log-file {path} is a folder; give a file name")
    try:
        if not path.parent.exists():
            path.parent.mkdir(parents=True)
        log = open(path, "a", encoding="utf-8")  # closed by the returned stop
    except OSError as error:
        raise OSError(f"--log-file {path}: {error.strerror or error}") from None
    command = shlex.join(["jaxdistill", *(argv if argv is not None else sys.argv[1:])])
    log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {command}\n")
    log.flush()
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = LogTee(stdout, log), LogTee(stderr, log)
    add_plain_sink(log)

    def stop() -> None:
        remove_plain_sink(log)
        if isinstance(sys.stdout, LogTee):
            sys.stdout = stdout
        if isinstance(sys.stderr, LogTee):
            sys.stderr = stderr
        log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} done\n")
        log.close()

    return stop
