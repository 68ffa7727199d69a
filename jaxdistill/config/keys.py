"""Shared checks of the YAML config sections (one wording for every section)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["as_temperatures", "check_keys"]


def check_keys(cls: type, data: Mapping[str, Any], where: str) -> None:
    """Raise ValueError naming the keys of ``data`` that dataclass ``cls`` lacks.

    Args:
        cls: the dataclass the section becomes.
        data: the section as parsed from YAML.
        where: how the message names the section ("md_validation", "a structure entry").
    """
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in {where}; allowed: {sorted(allowed)}")


def as_temperatures(value: Any) -> tuple[float, ...]:
    """A temperature list from YAML (a number, a list, or empty/None) as floats, K."""
    if value is None:
        return ()
    if isinstance(value, int | float):
        return (float(value),)
    return tuple(float(t) for t in value)
