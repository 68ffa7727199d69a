"""Finite-difference step for teacher Hessian-vector products, and the cost of autodiff ones.

For each teacher with autodiff ``hessian_vector_products`` (SevenNet-0, FeNNol ANI-1x,
Orb-v3 conservative with random weights) and a few small structures, this measures

- the error of central finite differences of the teacher's own forces,
  ``H·u ≈ -(F(R + h u) - F(R - h u)) / (2h)``, against the autodiff product, for
  steps ``h`` = 0.1, 0.03, 0.01, 0.003, 0.001 Å along unit ``3n`` directions: the
  relative Frobenius error ``|FD - AD| / |AD|`` over all directions, the largest
  per-direction relative error, and the largest entry error relative to the largest
  entry;
- the wall time of one autodiff call with ``K = 4`` directions, of one force + stress
  label call ``teacher.label([atoms])`` and of one finite-difference call (``2K`` force
  calls through ``jaxdistill.teachers.hessian.finite_difference_hvp``), medians of a few
  calls after a warm-up, on fresh positions (an ASE calculator would otherwise answer
  from its cache), and their ratios: the cost of a teacher HVP in teacher force calls.

CPU only; run it on an otherwise quiet machine (the times are the medians of a few):

    OMP_NUM_THREADS=1 python benchmarks/hvp_fd_step.py [OUTPUT.json] [--fennol-float64]

``--fennol-float64`` adds FeNNol in float64 (it turns on ``jax_enable_x64`` for the
process, so it runs last). Writes ``benchmarks/results/hvp_fd_step_cpu.json`` by
default. FeNNol needs ``../shared/teachers/fennol-ani1x`` (skipped when absent).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ase
import ase.build
import numpy as np

from jaxdistill.teachers import load_teacher

STEPS_ANGSTROM = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3)
N_DIRECTIONS = 4
REPEATS = 5
ROOT = Path(__file__).resolve().parents[1]
FENNOL_DIR = ROOT / ".." / "shared" / "teachers" / "fennol-ani1x"


def unit_directions(n_atoms: int, k: int, seed: int) -> np.ndarray:
    """``k`` Gaussian directions normalised over the ``3 n_atoms`` coordinates."""
    u = np.random.default_rng(seed).standard_normal((k, n_atoms, 3))
    return u / np.linalg.norm(u.reshape(k, -1), axis=1)[:, None, None]


def fd_hvp(teacher: Any, atoms: ase.Atoms, directions: np.ndarray, h: float) -> np.ndarray:
    """Central differences of the teacher's forces, ``[K, n, 3]`` eV/Å²."""
    frames = []
    for u in directions:
        for sign in (1.0, -1.0):
            moved = atoms.copy()
            moved.positions = atoms.positions + sign * h * u
            frames.append(moved)
    forces = np.stack([lab.forces for lab in teacher.label(frames)])
    return -(forces[0::2] - forces[1::2]) / (2.0 * h)


def step_errors(teacher: Any, atoms: ase.Atoms, directions: np.ndarray) -> dict[str, Any]:
    """FD-vs-autodiff errors per step (relative, dimensionless) and the symmetry check."""
    exact = teacher.hessian_vector_products(atoms, directions)
    out: dict[str, Any] = {"hvp_max_abs_ev_per_angstrom2": float(np.abs(exact).max())}
    per_step = {}
    for h in STEPS_ANGSTROM:
        diff = fd_hvp(teacher, atoms, directions, h) - exact
        per_direction = np.linalg.norm(diff.reshape(len(diff), -1), axis=1) / np.linalg.norm(
            exact.reshape(len(exact), -1), axis=1
        )
        per_step[f"{h:g}"] = {
            "relative_frobenius": float(np.linalg.norm(diff) / np.linalg.norm(exact)),
            "max_relative_per_direction": float(per_direction.max()),
            "max_abs_over_max_entry": float(np.abs(diff).max() / np.abs(exact).max()),
        }
    out["fd_error_by_step_angstrom"] = per_step
    # u·(H v) against v·(H u): the symmetry of the autodiff Hessian.
    gram = np.einsum("kij,lij->kl", directions, exact)
    out["symmetry_max_abs_ev_per_angstrom2"] = float(np.abs(gram - gram.T).max())
    return out


def median_seconds(call: Callable[[int], Any], repeats: int = REPEATS) -> float:
    """Median wall time of ``call(i)`` for i = 1..repeats, after one warm-up ``call(0)``."""
    call(0)
    times = []
    for i in range(1, repeats + 1):
        start = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def costs(teacher: Any, atoms: ase.Atoms) -> dict[str, float]:
    """Seconds of one autodiff HVP (K = 4), one label call, one FD HVP; their ratios."""
    from jaxdistill.teachers.hessian import finite_difference_hvp

    directions = unit_directions(len(atoms), N_DIRECTIONS, seed=1)

    def moved(i: int) -> ase.Atoms:
        # Fresh positions every call, so no calculator answers from its cache.
        new = atoms.copy()
        new.positions = atoms.positions + 1e-5 * (i + 1)
        return new

    label = median_seconds(lambda i: teacher.label([moved(i)]))
    autodiff = median_seconds(lambda i: teacher.hessian_vector_products(moved(i), directions))
    finite = median_seconds(
        lambda i: finite_difference_hvp(teacher, moved(i), directions, 0.01), repeats=3
    )
    return {
        "directions": N_DIRECTIONS,
        "label_seconds": label,
        "autodiff_hvp_seconds": autodiff,
        "fd_hvp_seconds": finite,
        "autodiff_hvp_in_label_calls": autodiff / label,
        "fd_hvp_in_label_calls": finite / label,
    }


def silicon(cubic: bool, repeat: int = 1, seed: int = 0) -> ase.Atoms:
    atoms = ase.build.bulk("Si", "diamond", a=5.43, cubic=cubic).repeat(repeat)
    atoms.rattle(0.05, seed=seed)
    return atoms


def molecule(name: str, seed: int = 0) -> ase.Atoms:
    atoms = ase.build.molecule(name)
    atoms.rattle(0.05, seed=seed)
    return atoms


def measure(teacher: Any, systems: dict[str, ase.Atoms], cost_system: str) -> dict[str, Any]:
    result: dict[str, Any] = {"teacher": teacher.name, "systems": {}}
    for name, atoms in systems.items():
        entry = {"n_atoms": len(atoms), "pbc": bool(np.all(atoms.pbc))}
        for seed in (0, 1):
            directions = unit_directions(len(atoms), N_DIRECTIONS, seed=100 + seed)
            entry[f"directions_seed{seed}"] = step_errors(teacher, atoms, directions)
        result["systems"][name] = entry
        print(f"  {name}: {json.dumps(entry['directions_seed0']['fd_error_by_step_angstrom'])}")
    result["cost"] = {"system": cost_system, **costs(teacher, systems[cost_system])}
    print(f"  cost on {cost_system}: {json.dumps(result['cost'])}")
    return result


def orb_conservative(folder: Path) -> Any:
    import torch
    from orb_models.forcefield import pretrained

    dtype = torch.get_default_dtype()
    torch.manual_seed(0)
    model = pretrained.orb_v3_conservative_architecture(device="cpu")
    path = folder / "orb-v3-conservative-random.ckpt"
    torch.save(model.state_dict(), path)
    torch.set_default_dtype(dtype)
    return load_teacher(f"orb:orb-v3-conservative-inf-omat@{path}")


def main(argv: list[str]) -> None:
    fennol64 = "--fennol-float64" in argv
    args = [a for a in argv if not a.startswith("--")]
    output = Path(args[0]) if args else ROOT / "benchmarks" / "results" / "hvp_fd_step_cpu.json"
    warnings.simplefilter("ignore")
    report: dict[str, Any] = {
        "what": "FD (central differences of the teacher's forces) vs autodiff H·u; "
        "errors are relative (dimensionless); costs in seconds and in label calls",
        "steps_angstrom": list(STEPS_ANGSTROM),
        "structures": "rattled 0.05 Å (ase rattle, seeds 0/1), unit random directions",
        "machine": platform.processor() or platform.machine(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "teachers": {},
    }
    print("sevennet 7net-0")
    report["teachers"]["sevennet-7net-0"] = measure(
        load_teacher("sevennet:7net-0"),
        {
            "si8": silicon(cubic=True),
            "si64": silicon(cubic=True, repeat=2),
            "ethanol": molecule("CH3CH2OH"),
        },
        cost_system="si64",
    )
    print("orb-v3 conservative (random weights)")
    with tempfile.TemporaryDirectory() as folder:
        report["teachers"]["orb-v3-conservative-random"] = measure(
            orb_conservative(Path(folder)),
            {"si8": silicon(cubic=True), "si64": silicon(cubic=True, repeat=2)},
            cost_system="si64",
        )
    if (FENNOL_DIR / "ani1x_model0.fnx").is_file():
        molecules = {
            "ethanol": molecule("CH3CH2OH"),
            "ethanol_seed1": molecule("CH3CH2OH", seed=1),
            "benzene": molecule("C6H6"),
        }
        print("fennol ani1x model0 (float32)")
        report["teachers"]["fennol-ani1x-model0-float32"] = measure(
            load_teacher(f"fennol:{FENNOL_DIR / 'ani1x_model0.fnx'}"), molecules, "ethanol"
        )
        print("fennol ani1x 8-model ensemble (float32), cost only")
        ensemble = load_teacher(f"fennol:{FENNOL_DIR}/ani1x_model*.fnx")
        report["teachers"]["fennol-ani1x-ensemble8-float32"] = {
            "teacher": ensemble.name,
            "cost": {"system": "ethanol", **costs(ensemble, molecules["ethanol"])},
        }
        print(f"  {report['teachers']['fennol-ani1x-ensemble8-float32']['cost']}")
        if fennol64:
            print("fennol ani1x model0 (float64)")
            report["teachers"]["fennol-ani1x-model0-float64"] = measure(
                load_teacher(f"fennol:{FENNOL_DIR / 'ani1x_model0.fnx'}", use_float64=True),
                molecules,
                "ethanol",
            )
    else:
        report["teachers"]["fennol-ani1x"] = f"skipped: {FENNOL_DIR} not found"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main(sys.argv[1:])
