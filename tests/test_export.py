"""Exported students (jax.export StableHLO) load and run with jax and the loader alone."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import ase.build
import numpy as np
import pytest
from ase.neighborlist import neighbor_list
from structures import ethanol

import jaxdistill.portable as portable
from jaxdistill import create_student
from jaxdistill.export import export_compiled

LOADER = Path(portable.__file__)


def _structures() -> list[ase.Atoms]:
    silicon = ase.build.bulk("Si", "diamond", a=5.43) * (2, 1, 1)  # cell < 2 cutoffs
    silicon.rattle(0.05, seed=1)
    return [silicon, ethanol()]


@pytest.fixture(scope="module", params=["float32", pytest.param("float64", marks=pytest.mark.slow)])
def student(request):
    return create_student(
        "painn",
        ["H", "C", "O", "Si"],
        cutoff=4.0,
        seed=5,
        dtype=request.param,
        features=8,
        num_layers=1,
        num_radial=6,
    )


def test_exported_student_runs_without_training_code(student, tmp_path):
    """A subprocess that imports only jax, numpy and the loader file (copied alone, so
    no jaxdistill, flax or optax) reproduces the student's padded-batch predictions and,
    from an unpadded ASE neighbour list, a periodic cell's own (smaller than twice the
    cutoff, so several images of a pair)."""
    path = export_compiled(student, tmp_path / "student.jaxexport")
    structures = _structures()
    graph = student.graph(structures)
    reference = student.predict(graph)
    inputs = {name: np.asarray(getattr(graph, name)) for name, _ in portable.INPUTS}
    for k, atoms in enumerate(structures[:1]):
        i, j, shifts = neighbor_list("ijS", atoms, student.cutoff)
        inputs.update(
            {
                f"{k}_positions": atoms.positions,
                f"{k}_numbers": atoms.numbers,
                f"{k}_cell": atoms.cell.array,
                f"{k}_pbc": atoms.pbc,
                f"{k}_senders": j,
                f"{k}_receivers": i,
                f"{k}_shifts": shifts,
            }
        )
    np.savez(tmp_path / "inputs.npz", **inputs)
    (tmp_path / "loader").mkdir()
    (tmp_path / "loader" / "portable.py").write_text(LOADER.read_text())
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        sys.path.insert(0, {str(tmp_path / "loader")!r})
        from portable import INPUTS, load_exported

        model = load_exported({str(path)!r})
        arrays = dict(np.load({str(tmp_path / "inputs.npz")!r}))
        batch = model(*(arrays[name] for name, _ in INPUTS))
        out = {{f"batch_{{k}}": np.asarray(v) for k, v in batch.items()}}
        for k in range(1):
            keys = ("positions", "numbers", "cell", "pbc", "senders", "receivers", "shifts")
            single = model(*(arrays[f"{{k}}_{{key}}"] for key in keys))
            out.update({{f"{{k}}_{{name}}": np.asarray(v) for name, v in single.items()}})
        np.savez({str(tmp_path / "outputs.npz")!r}, **out)
        heavy = [m for m in ("jaxdistill", "flax", "optax", "orbax", "ase", "h5py")
                 if m in sys.modules]
        assert not heavy, heavy
        print(repr(model))
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ExportedStudent(painn" in run.stdout
    out = np.load(tmp_path / "outputs.npz")
    tol = {"float32": dict(rtol=1e-5, atol=2e-5), "float64": dict(rtol=1e-12, atol=1e-12)}
    tol = tol[student.dtype]
    np.testing.assert_allclose(out["batch_energy"], reference.energy, **tol)
    np.testing.assert_allclose(out["batch_forces"], reference.forces, **tol)
    np.testing.assert_allclose(out["batch_stress"], reference.stress, **tol)
    for k, atoms in enumerate(structures[:1]):
        own = student.predict(atoms)
        np.testing.assert_allclose(out[f"{k}_energy"], own.energy[:1], **tol)
        np.testing.assert_allclose(out[f"{k}_forces"], own.forces[: len(atoms)], **tol)
        np.testing.assert_allclose(out[f"{k}_stress"], own.stress[:1], **tol)


def test_export_file_and_errors(tmp_path):
    student = create_student("schnet", ["Si"], cutoff=4.0, features=8, num_layers=1)
    student.metadata["teacher"] = {"name": "sevennet:7net-0"}
    path = export_compiled(student, tmp_path / "si.jaxexport", platforms=["cpu"])
    with zipfile.ZipFile(path) as archive:
        metadata = json.loads(archive.read("metadata.json"))
    assert metadata["symbols"] == ["Si"] and metadata["platforms"] == ["cpu"]
    assert metadata["student_metadata"]["teacher"]["name"] == "sevennet:7net-0"
    assert [p.name for p in tmp_path.iterdir()] == ["si.jaxexport"]
    with pytest.raises(FileExistsError, match="si.jaxexport exists"):
        export_compiled(student, path)
    with pytest.raises(ValueError, match="platforms must be among"):
        export_compiled(student, tmp_path / "x.jaxexport", platforms=["metal"])
    (tmp_path / "bad.jaxexport").write_text("not a zip")
    with pytest.raises(ValueError, match="bad.jaxexport is not an exported jaxdistill student"):
        portable.load_exported(tmp_path / "bad.jaxexport")
    # an isolated atom: no edges; the loader adds a masked one
    model = portable.load_exported(path)
    single = model(np.zeros((1, 3)), [14], np.zeros((3, 3)), [False] * 3, [], [], np.zeros((0, 3)))
    assert np.isfinite(float(single["energy"][0]))
    np.testing.assert_allclose(single["forces"], 0.0, atol=1e-6)


def test_a_graph_passes_as_it_is_in_either_layout(tmp_path):
    """docs/export.md: ``model(*graph)``, also for a receiver-major graph (its reverse
    edges are not an input; its padding slots are masked)."""
    from jaxdistill.graph import batch_graphs, neighbour_pairs, slots_for

    student = create_student("schnet", ["H", "C", "O", "Si"], cutoff=4.0, features=8, num_layers=1)
    model = portable.load_exported(export_compiled(student, tmp_path / "s.jaxexport"))
    structures = _structures()
    neighbours = [neighbour_pairs(atoms, student.cutoff) for atoms in structures]
    plain = batch_graphs(structures, student.cutoff, neighbours=neighbours)
    major = batch_graphs(
        structures, student.cutoff, neighbours=neighbours, slots_per_node=slots_for(neighbours)
    )
    assert major.reverse_edges is not None
    expected = student.potential.predict(student.params, plain)
    for graph in (plain, major):
        out = model(*graph)
        np.testing.assert_allclose(out["energy"], expected.energy, rtol=1e-5)
        np.testing.assert_allclose(out["forces"], expected.forces, rtol=1e-4, atol=1e-5)
