"""The head of a benchmark's JSON record: which script, when, on what, how run."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import Any

import jax


def header(**extra: Any) -> dict[str, Any]:
    """``script`` (the path under benchmarks/), ``date`` (UTC), ``devices`` (JAX's
    device kinds), ``jax`` and ``command`` (this process's arguments), then ``extra``."""
    return {
        "script": f"benchmarks/{Path(sys.argv[0]).name}",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "devices": [str(d.device_kind) for d in jax.devices()],
        "jax": jax.__version__,
        "command": " ".join(sys.argv),
        **extra,
    }
