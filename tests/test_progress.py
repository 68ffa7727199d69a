"""The shared progress bar: plain lines in logs, a live bar in terminals."""

from __future__ import annotations

import io

from rich.console import Console

from jaxdistill.progress import progress_bar


def plain_lines(output: str) -> list[str]:
    """The plain log lines (rich also prints the final bar once when it stops)."""
    return [line for line in output.splitlines() if line.endswith(" left")]


def run_task(console: Console, **options) -> str:
    with progress_bar(console, **options) as bar:
        task = bar.add_task("teacher MD", total=10, info="")
        for step in range(10):
            bar.update(task, advance=1, info=f"T {300 + step} K")
    return console.file.getvalue()


def test_log_file_gets_plain_progress_lines():
    output = run_task(Console(file=io.StringIO(), width=200), info=True, log_interval_s=0.0)
    lines = plain_lines(output)
    # one line per update at interval 0, the last one at 100 %, none repeated after it
    assert lines[0].startswith("teacher MD 1/10 (10 %) T 300 K")
    assert "10/10 (100 %) T 309 K" in lines[-1]
    assert sum("10/10" in line for line in lines) == 1
    assert "elapsed" in lines[-1] and "\x1b[" not in output


def test_log_lines_are_rate_limited():
    output = run_task(Console(file=io.StringIO(), width=200), log_interval_s=3600.0)
    lines = plain_lines(output)
    # only the final line: the interval never passed
    assert len(lines) == 1 and "10/10 (100 %)" in lines[0]


def test_terminal_gets_no_plain_lines():
    console = Console(file=io.StringIO(), force_terminal=True, width=200)
    output = run_task(console, log_interval_s=0.0)
    assert plain_lines(output) == []
    assert "10/10" in output


def test_disabled_bar_prints_nothing():
    assert run_task(Console(file=io.StringIO(), width=200), enabled=False).strip() == ""
