"""Evaluation against teacher labels: numbers equal a direct computation, plots, JSON."""

from __future__ import annotations

import json

import ase
import ase.build
import numpy as np
import pytest

from jaxdistill import create_student
from jaxdistill.data.store import LabelStore
from jaxdistill.evaluate import EV_PER_A3_TO_GPA, evaluate
from jaxdistill.labelling import label
from jaxdistill.potential import voigt_stress

FRACTIONS = {"train": 0.5, "validation": 0.25, "test": 0.25}


def alloy_frames(n: int, seed: int = 0) -> list[ase.Atoms]:
    """Rattled Cu/Ag fcc cells of 4 and 8 atoms, and small non-periodic clusters."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        if i % 3 == 2:
            atoms = ase.build.bulk("Cu", "fcc", a=3.7, cubic=True)
            atoms.center(vacuum=4.0)
            atoms.pbc = False
        else:
            atoms = ase.build.bulk("Cu", "fcc", a=3.7, cubic=True) * (1 + i % 2, 1, 1)
        symbols = rng.choice(["Cu", "Ag"], size=len(atoms))
        symbols[0] = "Ag"
        atoms.set_chemical_symbols(symbols)
        atoms.rattle(0.1, seed=i)
        frames.append(atoms)
    return frames


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "alloy.h5"
    label("ase:ase.calculators.emt:EMT", alloy_frames(16), path, progress=False)
    return path


@pytest.fixture(scope="module")
def student(store_path):
    student = create_student(
        "schnet", ["Cu", "Ag"], cutoff=4.0, seed=0, dtype="float64", features=8, num_layers=1
    )
    with LabelStore(store_path) as store:
        student.metadata["split"] = {
            "fractions": FRACTIONS,
            "seed": 3,
            "n_frames": len(store),
            "input_fingerprint": store.input_info["fingerprint"],
        }
        student.metadata["teacher"] = store.teacher
    return student


def direct_metrics(student, atoms_list, min_force=0.05):
    """The definitions of evaluate.py, one frame at a time, in plain numpy."""
    de, df, ft, fs, ds, elements = [], [], [], [], [], []
    for atoms in atoms_list:
        out = student.predict([atoms])
        n = len(atoms)
        de.append((float(out.energy[0]) - atoms.get_potential_energy()) / n)
        forces = np.asarray(out.forces[:n])
        df.append(forces - atoms.get_forces())
        ft.append(atoms.get_forces())
        fs.append(forces)
        elements.extend(atoms.get_chemical_symbols())
        if atoms.pbc.all():
            ds.append(np.asarray(voigt_stress(out.stress[0])) - atoms.get_stress())
    de, df, ft, fs, ds = (
        np.array(de),
        np.concatenate(df),
        np.concatenate(ft),
        np.concatenate(fs),
        np.array(ds),
    )
    keep = np.linalg.norm(ft, axis=1) >= min_force
    angles = []
    for t, s in zip(ft[keep], fs[keep], strict=True):
        cosine = t @ s / np.linalg.norm(t) / np.linalg.norm(s)
        angles.append(np.degrees(np.arccos(np.clip(cosine, -1, 1))))
    elements = np.array(elements)
    per_element = {e: 1e3 * np.mean(np.abs(df[elements == e])) for e in np.unique(elements)}
    return {
        "energy_mae": 1e3 * np.mean(np.abs(de)),
        "energy_rmse": 1e3 * np.sqrt(np.mean(de**2)),
        "force_mae": 1e3 * np.mean(np.abs(df)),
        "force_rmse": 1e3 * np.sqrt(np.mean(df**2)),
        "force_relative": np.mean(np.abs(df)) / np.mean(np.abs(ft)),
        "force_angle": np.mean(angles),
        "force_vector_mae": 1e3 * np.mean(np.linalg.norm(df, axis=1)),
        "stress_mae": 1e3 * np.mean(np.abs(ds)),
        "stress_frames": len(ds),
        "atoms": len(df),
        "per_element": per_element,
    }


def test_numbers_equal_a_direct_computation(student, store_path, tmp_path):
    result = evaluate(student, store_path, split="test", output_dir=tmp_path)
    with LabelStore(store_path) as store:
        indices = store.split(FRACTIONS, seed=3)["test"]
        frames = store.to_atoms(indices)
    assert result["provenance"]["data"]["frame_indices"] == indices.tolist()
    expected = direct_metrics(student, frames)
    assert result["frames"] == len(frames) == 4
    assert result["atoms"] == expected["atoms"]
    assert result["stress_frames"] == expected["stress_frames"] > 0
    e, f, s = result["energy"], result["forces"], result["stress"]
    assert e["mae_meV_per_atom"] == pytest.approx(expected["energy_mae"], rel=1e-9)
    assert e["rmse_meV_per_atom"] == pytest.approx(expected["energy_rmse"], rel=1e-9)
    assert f["mae_meV_per_A"] == pytest.approx(expected["force_mae"], rel=1e-9)
    assert f["rmse_meV_per_A"] == pytest.approx(expected["force_rmse"], rel=1e-9)
    assert f["relative_mae"] == pytest.approx(expected["force_relative"], rel=1e-9)
    assert f["angle_mean_deg"] == pytest.approx(expected["force_angle"], rel=1e-9)
    assert f["vector_mae_meV_per_A"] == pytest.approx(expected["force_vector_mae"], rel=1e-9)
    assert s["mae_meV_per_A3"] == pytest.approx(expected["stress_mae"], rel=1e-9)
    assert s["mae_GPa"] == pytest.approx(expected["stress_mae"] * 1e-3 * EV_PER_A3_TO_GPA)
    assert set(result["per_element"]) == {"Cu", "Ag"}
    for symbol, value in expected["per_element"].items():
        assert result["per_element"][symbol]["mae_meV_per_A"] == pytest.approx(value, rel=1e-9)
    assert result["provenance"]["teacher"]["name"] == "EMT"
    assert result["provenance"]["teacher_matches_training"] is True


def test_plots_and_json_are_written(student, store_path, tmp_path):
    import matplotlib.image

    result = evaluate(student, store_path, split="all", output_dir=tmp_path)
    assert result["frames"] == 16
    assert set(result["files"]) == {"energy", "forces", "stress", "force_error_histogram", "json"}
    for name, file in result["files"].items():
        path = tmp_path / file
        assert path.is_file() and path.stat().st_size > 1000, name
        if file.endswith(".png"):
            image = matplotlib.image.imread(path)
            assert image.ndim == 3 and image.shape[0] > 100 and image[..., :3].std() > 0
    written = json.loads((tmp_path / "evaluation.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert written["provenance"]["student"]["architecture"] == "schnet"


def test_clear_errors(student, store_path, tmp_path):
    untrained = create_student("schnet", ["Cu", "Ag"], cutoff=4.0, features=8, num_layers=1)
    with pytest.raises(ValueError, match="split='all'"):
        evaluate(untrained, store_path, split="test")
    with pytest.raises(ValueError, match="unknown split 'holdout'"):
        evaluate(student, store_path, split="holdout")
    other = tmp_path / "other.h5"
    label("ase:ase.calculators.emt:EMT", alloy_frames(16, seed=1), other, progress=False)
    with pytest.raises(ValueError, match="not the store this student was trained on"):
        evaluate(student, other, split="test")
    copper_only = create_student("schnet", ["Cu"], cutoff=4.0, features=8, num_layers=1)
    with pytest.raises(ValueError, match="element.*Ag.*unknown"):
        evaluate(copper_only, other, split="all")
