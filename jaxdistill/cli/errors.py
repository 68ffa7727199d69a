"""One error style for the whole CLI.

A user error (a bad file, frame, key or flag) is one line on stderr, ``error: ...``,
naming the culprit, and the command exits with :data:`USER_ERROR` (2, like a bad flag);
an MD run that stops unstable exits with 1. A traceback appears only with ``--debug``
(``jaxdistill --debug COMMAND ...``; the flag is accepted anywhere on the line) or with
the environment variable ``JAXDISTILL_DEBUG=1``.

- :func:`report_errors` wraps a command function (any typer app that registers it
  gets the style);
- :class:`JaxdistillGroup` gives the app's flag-parsing errors (``--replicas 0``) the
  same one line, and accepts the app's ``--debug`` and ``--log-file PATH`` anywhere on
  the line.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
import typer
from typer.core import TyperGroup

__all__ = ["USER_ERROR", "JaxdistillGroup", "debug_enabled", "report_errors", "user_error_line"]

#: Exit code of a user error (bad input): the same as click's for a bad flag.
USER_ERROR = 2

F = TypeVar("F", bound=Callable[..., Any])

_debug = False

# typer >= 0.2x carries its own copy of click (typer._click): its exceptions are not
# click's. Both kinds are recognised, by their place in typer's and click's hierarchies.
_USAGE_ERRORS = tuple({typer.BadParameter.__mro__[1], click.UsageError})
_CLI_EXITS = tuple(
    {
        typer.Exit,
        typer.Abort,
        typer.BadParameter.__mro__[2],  # ClickException of the click typer uses
        click.exceptions.Exit,
        click.ClickException,
        click.Abort,
    }
)


def set_debug(value: bool) -> None:
    """Show tracebacks of user errors (the ``--debug`` flag)."""
    global _debug
    _debug = bool(value)


def debug_enabled() -> bool:
    """True with ``--debug`` or ``JAXDISTILL_DEBUG=1``."""
    return _debug or os.environ.get("JAXDISTILL_DEBUG", "") not in ("", "0")


def _is_user_error(error: BaseException) -> bool:
    if isinstance(error, _CLI_EXITS):
        return False  # typer's own exits and usage errors: handled by click
    if isinstance(error, ValueError | OSError | ImportError | RuntimeError):
        return True
    try:  # h5py and yaml errors outside the readers that translate them
        import yaml

        return isinstance(error, yaml.YAMLError)
    except ImportError:  # pragma: no cover
        return False


def user_error_line(error: BaseException) -> str:
    """The one line a user error prints (its message, joined onto one line)."""
    if isinstance(error, OSError) and error.strerror and not str(error).startswith("["):
        text = str(error)
    elif isinstance(error, OSError) and error.strerror:
        name = f"{error.filename}: " if error.filename else ""
        text = f"{name}{error.strerror}"
    elif isinstance(error, KeyError) and error.args:
        text = str(error.args[0])
    else:
        text = str(error) or type(error).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _print_error(line: str, label: str = "error") -> None:
    typer.secho(f"{label}: ", fg="red", bold=True, err=True, nl=False)
    typer.echo(line, err=True)


def report_errors(command: F) -> F:
    """Wrap a command: user errors print one line and exit with :data:`USER_ERROR`."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except Exception as error:
            if not _is_user_error(error) or debug_enabled():
                raise
            _print_error(user_error_line(error))
            raise typer.Exit(code=USER_ERROR) from None

    return wrapper  # type: ignore[return-value]


def _global_options_first(args: list[str], position: int) -> list[str]:
    """``--log-file PATH`` (or ``--log-file=PATH``) moved before the command name, so
    the app's option is accepted anywhere before ``--``."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < position:
        arg = args[i]
        if arg == "--log-file" and i + 1 < position:
            front += args[i : i + 2]
            i += 2
            continue
        if arg.startswith("--log-file="):
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return [*front, *rest, *args[position:]]


class JaxdistillGroup(TyperGroup):
    """The app's command group: ``--debug`` anywhere on the line, and flag errors
    (a missing option, a value out of range) as one line too."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["jaxdistill_argv"] = list(args)
        position = args.index("--") if "--" in args else len(args)
        debug = "--debug" in args[:position]
        if debug:
            args = ["--debug", *(a for a in args[:position] if a != "--debug"), *args[position:]]
            position = args.index("--") if "--" in args else len(args)
        set_debug(debug)
        return super().parse_args(ctx, _global_options_first(args, position))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _USAGE_ERRORS as error:
            if debug_enabled():
                raise
            command = ctx.invoked_subcommand or (error.ctx.info_name if error.ctx else "")
            where = f"jaxdistill {command} --help" if command else "jaxdistill --help"
            _print_error(f"{error.format_message()} (see {where})")
            sys.stderr.flush()
            raise typer.Exit(code=USER_ERROR) from None
