"""The calculator's compiled program under XLA options, paired in one process (issue 18).

    python benchmarks/xla_options_ab.py --systems si64,si1000 \\
        --options "default=;fusion=xla_gpu_enable_command_buffer:FUSION" \\
        --output benchmarks/results/xla_options_ab.json

``XLA_FLAGS`` holds for a whole process, and a GPU host's timings drift by tens of
percent between processes (docs/benchmarks.md, "A single call's floor"). JAX also
takes XLA's options per compilation (``lowered.compile(compiler_options=...)``), so
here one process compiles the calculator's forces program once per option set and
times the variants in rotating order, round by round, on the same input (a host
array, fetched as the calculator fetches). Reported: each variant's median and 99th
percentile, the median over rounds of its paired difference from the first variant
with the 25-75 % range, and the largest difference of its result from the first's.

``--options``: ``name=key:value|key:value;name=...`` (a value may hold commas, as XLA's
list flags do); an empty list is XLA's default.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from calculator_ab import _stats, paired_rounds
from records import sweep_students

from jaxdistill import StudentCalculator
from jaxdistill.md.ase_calculator import fetch


def parse_options(text: str) -> dict[str, dict[str, str]]:
    """``"a=k:v|k2:v2,v3|k3:1;b="`` -> ``{"a": {"k": "v", "k2": "v2,v3", "k3": 1},
    "b": {}}`` (values typed by :func:`_typed`)."""
    variants = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, settings = part.partition("=")
        pairs = (item.partition(":") for item in filter(None, settings.split("|")))
        variants[name.strip()] = {key.strip(): _typed(value.strip()) for key, _, value in pairs}
    return variants


def _typed(value: str) -> bool | int | str:
    """XLA's option values as their types ("true" a bool, "8" an int; lists stay text)."""
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    return int(value) if value.lstrip("-").isdigit() else value


def compare(student, atoms, variants: dict[str, dict[str, str]], calls: int) -> dict:
    atoms = atoms.copy()
    atoms.calc = StudentCalculator(student)
    atoms.get_forces()
    calculator = atoms.calc
    program = calculator.program()
    packed = calculator._input_buffer.copy()
    lowered = program.func.lower(*program.args, packed, **program.keywords)
    dynamic = program.args[1:]  # (the potential is static)
    compiled = {name: lowered.compile(compiler_options=opts) for name, opts in variants.items()}
    first = next(iter(variants))
    reference = fetch(compiled[first](*dynamic, packed))
    differences = {
        name: float(np.max(np.abs(fetch(call(*dynamic, packed)) - reference)))
        for name, call in compiled.items()
    }

    def timed(call) -> float:
        start = time.perf_counter()
        fetch(call(*dynamic, packed), calculator._spin)
        return (time.perf_counter() - start) * 1e3

    cases = {name: (lambda call=call: timed(call)) for name, call in compiled.items()}
    for case in cases.values():
        case()
    times = paired_rounds(cases, calls)
    return {
        "variants": variants,
        **{name: _stats(values) for name, values in times.items()},
        "minus_first": {name: _stats(np.subtract(times[name], times[first])) for name in variants},
        "max_result_difference": differences,
        "device": str(calculator.jax_device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--architectures", default="painn")
    parser.add_argument("--systems", default="si64,si1000")
    parser.add_argument("--options", default="default=;fusion=xla_gpu_enable_command_buffer:FUSION")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    variants = parse_options(args.options)

    def describe(row: dict) -> str:
        return "; ".join(
            f"{v} {row[v]['median_ms']:.3f} ms (paired {row['minus_first'][v]['median_ms']:+.3f}"
            f" [{row['minus_first'][v]['p25_ms']:+.3f}, {row['minus_first'][v]['p75_ms']:+.3f}],"
            f" dF {row['max_result_difference'][v]:.1e})"
            for v in variants
        )

    sweep_students(
        args.output,
        args.systems,
        args.architectures,
        lambda student, atoms: compare(student, atoms, variants, args.calls),
        describe,
        "xla",
    )


if __name__ == "__main__":
    main()
