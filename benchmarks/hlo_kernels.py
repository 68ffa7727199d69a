"""Read a traced MD step's costliest kernels op by op, from the HLO that made them (issue 13).

    python benchmarks/hlo_kernels.py --profile results/profile_h100/step_profile.json \
        --hlo results/profile_h100/hlo_painn64x3_4096_dense_update_u1.txt \
        --student painn64x3 --n-atoms 4096 --format dense

``step_profile.py --hlo-dir`` writes the compiled chunk's HLO beside its trace. A
kernel's name in the trace is its fusion's name in that HLO with ``.`` written as ``_``
(``input_reduce_fusion_1`` is ``%input_reduce_fusion.1``). For each of the row's top
kernels this prints its time per step, the fusion's kind, its output shape, the bytes
it writes and the bytes of its operands (an upper bound on what it reads: a fused
gather reads only the rows it indexes), the bandwidth those bytes imply, the operations
inside the fusion, and JAX's ``op_name`` of the fusion's root (which model line it
came from). A kernel far below the card's bandwidth (3.35 TB/s on an H100, 4.8 on an
H200) is bound by something other than memory traffic.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
from pathlib import Path

#: bytes per element of HLO element types
DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "f16": 2, "bf16": 2, "s16": 2, "u16": 2,
    "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8,
}  # fmt: skip

_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16)\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+) = (.+?) ([\w\-]+)\((.*)$")
_FUSION = re.compile(
    r"^\s*(?:ROOT\s+)?%([\w.\-]+) = (.+?) fusion\(([^)]*)\), kind=(\w+), calls=%([\w.\-]+)"
)
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+) \(.*\) -> .* \{\s*$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape (an array or a tuple of arrays) as printed in HLO text."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        elements = 1
        for d in dims.split(","):
            if d:
                elements *= int(d)
        total += elements * DTYPE_BYTES.get(dtype, 4)
    return total


def parse_hlo(text: str) -> tuple[dict[str, str], dict[str, dict], dict[str, list[str]]]:
    """``(shapes, fusions, bodies)``: every instruction's output shape by name, every
    fusion instruction (output shape, operands, kind, called computation, op_name) by
    name, and each computation's operation kinds."""
    shapes: dict[str, str] = {}
    fusions: dict[str, dict] = {}
    bodies: dict[str, list[str]] = collections.defaultdict(list)
    current = None
    for line in text.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            current = header.group(1)
            continue
        if line.startswith("}"):
            current = None
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, shape, op = match.group(1), match.group(2), match.group(3)
        shapes[name] = shape
        if current is not None:
            bodies[current].append(op)
        fusion = _FUSION.match(line)
        if fusion:
            op_name = _OP_NAME.search(line)
            fusions[name] = {
                "shape": fusion.group(2),
                "operands": [
                    o.strip().lstrip("%") for o in fusion.group(3).split(",") if o.strip()
                ],
                "kind": fusion.group(4),
                "calls": fusion.group(5),
                "op_name": op_name.group(1) if op_name else "",
            }
    return shapes, fusions, bodies


def describe(
    kernel: dict, shapes: dict, fusions: dict, bodies: dict, by_trace_name: dict[str, str]
) -> dict:
    """One top kernel of a step_profile row, read against the HLO (``by_trace_name``:
    the fusions' names as the trace writes them, to their HLO names)."""
    name = kernel["name"]
    hlo_name = by_trace_name.get(name)
    row = {
        "kernel": name,
        "us_per_step": round(kernel["us_per_step"], 1),
        "calls_per_step": round(kernel["calls_per_step"], 2),
        "us_per_call": round(kernel["us_per_call_median"], 2),
    }
    if hlo_name is None:
        row["note"] = "not a fusion of this HLO (a library call, a copy or another program)"
        return row
    fusion = fusions[hlo_name]
    written = shape_bytes(fusion["shape"])
    read = sum(shape_bytes(shapes.get(o, "")) for o in fusion["operands"])
    ops = collections.Counter(
        op for op in bodies.get(fusion["calls"], []) if op not in ("parameter", "constant")
    )
    seconds = kernel["us_per_call_median"] * 1e-6
    row.update(
        kind=fusion["kind"],
        output=_ARRAY.sub(lambda m: f"{m.group(1)}[{m.group(2)}]", fusion["shape"])[:80],
        mb_written=round(written / 1e6, 2),
        mb_operands=round(read / 1e6, 2),
        gb_per_s_bound=round((written + read) / seconds / 1e9, 1) if seconds else None,
        ops=dict(ops.most_common(8)),
        op_name=fusion["op_name"].split("jit(step_fn)/")[-1][-140:],
    )
    return row


def _per_step(case: dict, label: str) -> dict:
    """A call_profile.py case in step_profile.py's terms (one call is one step)."""
    kernels = [
        {**k, "us_per_step": k["us_per_call"], "calls_per_step": k["calls_per_call"]}
        for k in case.get("top_kernels", [])
    ]
    return {
        "label": label,
        "us_per_step": case["wall_us_per_call"],
        "kernels_per_step": case.get("kernels_per_call"),
        "top_kernels": kernels,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--profile", type=Path, required=True, help="step_profile.py or call_profile.py JSON"
    )
    parser.add_argument("--hlo", type=Path, required=True, help="its HLO text of the same row")
    parser.add_argument("--student", default="painn64x3")
    parser.add_argument("--n-atoms", type=int, default=4096)
    parser.add_argument("--format", default="dense")
    parser.add_argument(
        "--call-case",
        default=None,
        help="a call_profile.py JSON: its case (bare or jaxmd_force) of --architecture and "
        "--system, read per call instead of per step",
    )
    parser.add_argument("--architecture", default="painn")
    parser.add_argument("--system", default="si1000")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    record = json.loads(args.profile.read_text())
    if args.call_case:
        label = f"{args.architecture} {args.system} {args.call_case}"
        rows = [
            _per_step(row[args.call_case], label)
            for row in record["rows"]
            if row.get("architecture") == args.architecture
            and row.get("system") == args.system
            and row.get(args.call_case)
        ]
    else:
        label = f"{args.student} {args.n_atoms} atoms, {args.format}"
        rows = [
            row
            for run in record["runs"]
            for row in run.get("rows", [])
            if row.get("student") == args.student
            and row.get("n_atoms") == args.n_atoms
            and row.get("format") == args.format
            and row.get("neighbor_update", True)
        ]
    if not rows:
        raise SystemExit(f"no row for {label} in {args.profile}")
    row = rows[0]
    shapes, fusions, bodies = parse_hlo(args.hlo.read_text())
    by_trace_name = {n.replace(".", "_"): n for n in fusions}
    kernels = [
        describe(k, shapes, fusions, bodies, by_trace_name) for k in row.get("top_kernels", [])
    ]
    print(
        f"{label}: {row['us_per_step']:.1f} us/step (a call), "
        f"{row.get('kernels_per_step')} kernels/step; the top {len(kernels)}:"
    )
    for k in kernels:
        print(json.dumps(k))
    if args.output:
        args.output.write_text(
            json.dumps(
                {"profile": str(args.profile), "hlo": str(args.hlo), "kernels": kernels}, indent=1
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
