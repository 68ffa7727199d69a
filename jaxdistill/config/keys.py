"""Shared checks of the YAML config sections (one wording for every section).

- :func:`read_yaml`: a YAML file as a mapping, with one-line errors (missing file,
  invalid YAML with its line and column, not a mapping);
- :func:`check_keys`: unknown keys (typos) and values of the wrong type, named;
- :func:`as_temperatures`: a temperature list, named when it is not one.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["as_temperatures", "check_keys", "check_types", "read_yaml"]


def read_yaml(path: str | Path, what: str = "config") -> Any:
    """Parse a YAML file; a missing file or invalid YAML raises a one-line error.

    Args:
        path: the file.
        what: how the message names the file ("config", "training config").

    Returns:
        The parsed document (None for an empty file).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path} is not a text (YAML) file") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"{what} {path} is not valid YAML{where}: {problem}") from None


def check_keys(cls: type, data: Mapping[str, Any], where: str) -> None:
    """Raise ValueError naming the keys of ``data`` that dataclass ``cls`` lacks, or
    whose values have the wrong type (see :func:`check_types`).

    Args:
        cls: the dataclass the section becomes.
        data: the section as parsed from YAML.
        where: how the message names the section ("md_validation", "a structure entry").
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a mapping of keys, got {_describe(data)}")
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in {where}; allowed: {sorted(allowed)}")
    check_types(cls, data, where)


_SIMPLE = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _simple_types(annotation: Any) -> tuple[set[type], bool] | None:
    """The simple types (int, float, bool, str) a field takes and whether None is
    allowed; None for fields of any other type (not checked here)."""
    options = (
        typing.get_args(annotation)
        if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
        else (annotation,)
    )
    allowed, optional = set(), False
    for option in options:
        if option is type(None):
            optional = True
        elif option in _SIMPLE:
            allowed.add(option)
        else:
            return None
    return (allowed, optional) if allowed else None


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f"the text {value!r}"
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return repr(value)


def _fits(value: Any, allowed: set[type]) -> bool:
    if isinstance(value, bool):
        return bool in allowed
    if isinstance(value, int):
        return int in allowed or float in allowed
    if isinstance(value, float):
        return float in allowed or (int in allowed and math.isfinite(value) and value.is_integer())
    return isinstance(value, str) and str in allowed


def check_types(cls: type, data: Mapping[str, Any], where: str) -> None:
    """Raise ValueError naming the first key whose value does not fit its field's type.

    Only fields annotated with int, float, bool, str (or those or None) are checked:
    a number is not a text, "forty" is not an integer, ``true`` is not a number. YAML
    reads ``3e-4`` (no dot) as text; the message says to write ``3.0e-4``.
    """
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation that cannot be resolved: leave it to the class
        return
    for key, value in data.items():
        simple = _simple_types(hints.get(key))
        if simple is None:
            continue
        allowed, optional = simple
        if value is None and optional:
            continue
        if _fits(value, allowed):
            continue
        wanted = " or ".join(_SIMPLE[t] for t in (int, float, bool, str) if t in allowed)
        if float in allowed and int in allowed:
            wanted = "a number"
        hint = ""
        if isinstance(value, str) and float in allowed:
            try:
                float(value)
                hint = f" (YAML reads it as text: write it as a number, e.g. {float(value)!r})"
            except ValueError:
                pass
        raise ValueError(
            f"{where}: {key} must be {wanted}{' or null' if optional else ''}, "
            f"got {_describe(value)}{hint}"
        )


def as_temperatures(value: Any, key: str = "temperatures_kelvin") -> tuple[float, ...]:
    """A temperature list from YAML (a number, a list, or empty/None) as floats, K.

    Args:
        value: the YAML value.
        key: the key named when ``value`` is not a number or a list of numbers.
    """
    if value is None:
        return ()
    items = [value] if not isinstance(value, list | tuple) else list(value)
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | float) or item != item:
            raise ValueError(
                f"{key} must be a temperature in K or a list of them, got {_describe(value)}"
            )
    return tuple(float(t) for t in items)
