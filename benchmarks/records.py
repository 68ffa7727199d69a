"""The head of a benchmark's JSON record: which script, when, on what, how run."""

from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Callable
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


def sweep_students(
    output: Path,
    systems: str,
    architectures: str,
    measure: Callable[[Any, Any], dict],
    describe: Callable[[dict], str],
    tag: str,
    **extra: Any,
) -> dict[str, Any]:
    """Every structure (``"si64,si1000"``, names of ``student_call.structures``) times
    every architecture (``"painn,schnet"``, ``student_call.untrained_student``):
    ``measure(student, atoms)`` gives a row's figures. Each row is written to ``output``
    (the :func:`header` plus ``rows``) as soon as it is done and printed as ``[tag] arch
    system: describe(row)``; a row that raises records its error and the sweep goes on.
    """
    from student_call import structures, untrained_student

    record = header(**extra, rows=[])
    available = structures(quick=False)
    for name in systems.split(","):
        atoms = available[name]
        for architecture in architectures.split(","):
            row = {"architecture": architecture, "system": name, "n_atoms": len(atoms)}
            try:
                row.update(measure(untrained_student(architecture, atoms), atoms))
            except Exception as error:  # record and go on: one failure, not the run
                row["error"] = f"{type(error).__name__}: {error}"[:500]
            record["rows"].append(row)
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(json.dumps(record, indent=1) + "\n")
            text = row["error"] if "error" in row else describe(row)
            print(f"[{tag}] {architecture} {name}: {text}", flush=True)
    return record
