"""Curvature validation (jaxdistill.curvature): phonons with phonopy and molecular
vibrations with ASE, student vs teacher, on real calculators (no mocks).

Cheap real calculators: Stillinger-Weber silicon (matscipy, installed with sevenn), EMT
copper and EMT's H/O parameters; FeNNol ANI-1x from ../shared where present.
"""

from __future__ import annotations

import json
from pathlib import Path

import ase.build
import ase.io
import numpy as np
import pytest
from ase.calculators.emt import EMT
from typer.testing import CliRunner

from jaxdistill import StudentCalculator, create_student
from jaxdistill.cli import app
from jaxdistill.config import DistillConfig, stage_hashes
from jaxdistill.config.validation import PhononConfig, VibrationsConfig
from jaxdistill.curvature import (
    THZ_TO_CM1,
    phonon_comparison,
    plot_phonons,
    real_mode_count,
    vibration_comparison,
)

ANI1X = Path(__file__).resolve().parents[2] / "shared" / "teachers" / "fennol-ani1x"


def stillinger_weber():
    """Stillinger-Weber silicon (PRB 31, 5262), a real and cheap Si potential."""
    manybody = pytest.importorskip("matscipy.calculators.manybody")
    forms = pytest.importorskip("matscipy.calculators.manybody.explicit_forms")
    from matscipy.calculators.manybody.explicit_forms.stillinger_weber import (
        Stillinger_Weber_PRB_31_5262_Si,
    )

    return manybody.Manybody(**forms.StillingerWeber(Stillinger_Weber_PRB_31_5262_Si))


@pytest.fixture(scope="module")
def student():
    """One small untrained student for every element used here (creating one costs
    seconds of flax initialisation on a busy 2-core CPU; tests/pipeline/
    test_curvature_stages.py makes the same one, so its initialisation is compiled once)."""
    return create_student("schnet", ["H", "O", "Si", "Cu"], cutoff=4.0, features=8, num_layers=1)


def _finite_json(data) -> dict:
    """Round-trip through strict JSON (no NaN): every number finite."""
    return json.loads(json.dumps(data, allow_nan=False))


def test_si_phonons_against_itself_are_identical_and_physical():
    si = ase.build.bulk("Si", "diamond", a=5.431)  # 2-atom primitive cell
    comparison = phonon_comparison(
        stillinger_weber(), stillinger_weber(), si, (2, 2, 2), dos_mesh=(12, 12, 12)
    )
    m = comparison.metrics()
    assert m["band_mae_thz"] == 0.0 and m["band_max_error_thz"] == 0.0
    assert m["dos_relative_difference"] == 0.0
    # the standard fcc path: starts at Γ and passes X and L
    labels = [label for _, label in comparison.path.labels]
    assert labels[0] == "Γ" and {"X", "L", "K", "W"} <= set(labels)
    assert np.allclose(comparison.path.qpoints[0], 0.0)
    gamma = np.array(m["points"]["Γ"]["teacher_thz"])
    assert np.all(np.abs(gamma[:3]) < 1e-3)  # acoustic modes at Γ
    # SW's optical Γ mode is about 17.8 THz (experiment: 15.5 THz; SW is known stiff)
    assert 16.5 < gamma[3] < 19.0
    assert comparison.n_primitive == 2 and comparison.n_supercell == 16
    assert comparison.displacements == 2  # one symmetry-distinct displacement, ± it
    # the DOS integrates to 3 modes per atom of the primitive cell
    t = comparison.teacher
    width = t.dos_frequencies_thz[1] - t.dos_frequencies_thz[0]
    assert abs(t.dos.sum() * width - 6.0) < 0.05


def test_acoustic_modes_vanish_at_gamma_for_emt_copper():
    cu = ase.build.bulk("Cu", "fcc", a=3.61)
    comparison = phonon_comparison(EMT(), EMT(), cu, (3, 3, 3))
    m = comparison.metrics()
    assert m["teacher_acoustic_gamma_max_thz"] < 1e-2
    assert comparison.teacher.frequencies_thz.min() > -1e-2  # stable, no imaginary modes
    assert 6.0 < comparison.teacher.frequencies_thz.max() < 9.0  # Cu: ~7.3 THz measured


def test_student_vs_stillinger_weber_phonons_end_to_end(student, tmp_path):
    si = ase.build.bulk("Si", "diamond", a=5.431, cubic=True)  # phonopy finds the primitive
    comparison = phonon_comparison(
        StudentCalculator(student), stillinger_weber(), si, (1, 1, 1), dos_mesh=(8, 8, 8)
    )
    assert comparison.n_primitive == 2 and comparison.n_supercell == 8
    data = _finite_json(comparison.to_dict())
    m = data["metrics"]
    assert m["band_mae_thz"] > 0 and m["band_max_error_thz"] >= m["band_mae_thz"]
    assert set(m["points"]) >= {"Γ", "X", "L"}
    n_q = len(data["path"]["qpoints"])
    assert np.shape(data["student"]["frequencies_thz"]) == (n_q, 6)
    # both DOS on one grid, so they can be subtracted
    assert data["student"]["dos_frequencies_thz"] == data["teacher"]["dos_frequencies_thz"]
    png = plot_phonons(comparison, tmp_path / "phonons.png")
    assert png.stat().st_size > 10_000


def test_real_mode_count():
    assert real_mode_count(ase.build.molecule("H2O")) == 3
    assert real_mode_count(ase.build.molecule("CO2")) == 4  # linear: 3N - 5
    assert real_mode_count(ase.build.molecule("CH3CH2OH")) == 21
    assert real_mode_count(ase.Atoms("Ar")) == 0


def test_vibrations_against_itself_and_no_cache_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    water = ase.build.molecule("H2O")
    comparison = vibration_comparison(EMT(), EMT(), water)
    m = comparison.metrics()
    assert m["n_modes"] == 3 and m["mae_cm1"] == 0.0 and m["max_error_cm1"] == 0.0
    assert comparison.teacher.converged and comparison.teacher.max_force_ev_per_angstrom < 1e-3
    assert m["geometry_rmsd_angstrom"] < 1e-9
    assert np.all(comparison.teacher.modes_cm1 > 0)
    assert list(tmp_path.iterdir()) == []  # ASE's vib cache went to a temporary folder


@pytest.mark.slow  # loading and compiling the FeNNol model: ~15 s on 2 cores
@pytest.mark.skipif(not ANI1X.is_dir(), reason=f"FeNNol ANI-1x not found at {ANI1X}")
def test_fennol_ani1x_water_vibrations_against_itself():
    pytest.importorskip("fennol")
    from jaxdistill.teachers import load_teacher

    teacher = load_teacher(f"fennol:{ANI1X / 'ani1x_model0.fnx'}", device="cpu")
    comparison = vibration_comparison(
        teacher.as_calculator(), teacher.as_calculator(), ase.build.molecule("H2O")
    )
    m = comparison.metrics()
    assert m["n_modes"] == 3 and m["mae_cm1"] == 0.0
    bend, *stretches = comparison.teacher.modes_cm1
    # harmonic ωB97x/6-31G(d) water, which ANI-1x learnt: bend ~1600, stretches ~3900-4100
    assert 1500 < bend < 1750 and all(3700 < s < 4300 for s in stretches)
    assert abs(THZ_TO_CM1 - 33.356) < 1e-3


# -- configuration -----------------------------------------------------------------

BASE = {
    "name": "t",
    "teacher": "ase:ase.calculators.emt:EMT",
    "sampling": {"structures": [{"build": "bulk", "args": {"name": "Cu", "cubic": True}}]},
}


def test_config_sections_parse_round_trip_and_check_types():
    config = DistillConfig.from_dict(
        {
            **BASE,
            "phonons": {
                "structure": {"build": "bulk", "args": {"name": "Cu"}},
                "supercell": [[-1, 1, 1], [1, -1, 1], [1, 1, -1]],
            },
            "vibrations": {"molecules": ["H2O", {"build": "molecule", "args": {"name": "NH3"}}]},
        }
    )
    assert config.phonons.supercell == ((-1, 1, 1), (1, -1, 1), (1, 1, -1))
    assert config.phonons.displacement_angstrom == 0.01
    assert [m.args["name"] for m in config.vibrations.molecules] == ["H2O", "NH3"]
    assert config.vibrations.fmax_ev_per_angstrom == 1e-3
    again = DistillConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()
    assert PhononConfig.from_dict({}).supercell == (2, 2, 2)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['super_cell'\] in phonons"):
        PhononConfig.from_dict({"super_cell": [2, 2, 2]})
    with pytest.raises(ValueError, match="supercell must be three positive integers"):
        PhononConfig.from_dict({"supercell": [2, 0, 2]})
    with pytest.raises(ValueError, match="displacement_angstrom must be a number"):
        PhononConfig.from_dict({"displacement_angstrom": "small"})
    with pytest.raises(ValueError, match=r"vibrations: molecules\[0\] must be a structure"):
        VibrationsConfig.from_dict({"molecules": [3]})


def test_unconfigured_stages_keep_earlier_runs_hashes():
    import hashlib

    plain = stage_hashes(DistillConfig.from_dict(BASE))
    # not configured: left out of the chain (the report chains straight from md), as
    # before these stages existed
    assert plain["phonons"] == plain["vibrations"] == plain["md"]
    expected = hashlib.sha256((plain["md"] + json.dumps(None)).encode()).hexdigest()[:16]
    assert plain["report"] == expected
    configured = stage_hashes(DistillConfig.from_dict({**BASE, "phonons": {}}))
    assert configured["md"] == plain["md"] and configured["phonons"] != plain["phonons"]
    assert configured["report"] != plain["report"]


# -- command line ------------------------------------------------------------------


def test_phonons_and_vibrations_commands(student, tmp_path):
    student_dir = tmp_path / "student"
    student.save(student_dir)
    ase.io.write(tmp_path / "cu.cif", ase.build.bulk("Cu", "fcc", a=3.61))
    runner = CliRunner()
    common = ["--student", str(student_dir), "--teacher", "ase:ase.calculators.emt:EMT"]
    out = tmp_path / "ph"
    args = ["phonons", *common, "--structure", str(tmp_path / "cu.cif"), "--output", str(out)]
    result = runner.invoke(app, [*args, "--supercell", "2", "2", "2", "--dos-mesh", "6", "6", "6"])
    assert result.exit_code == 0, result.output
    data = _finite_json(json.loads((out / "phonons.json").read_text()))
    assert data["metrics"]["band_mae_thz"] > 0
    assert (out / "phonons.png").is_file() and (out / "teacher_phonopy_params.yaml").is_file()
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--overwrite" in again.output

    out = tmp_path / "vib"
    result = runner.invoke(
        app,
        ["vibrations", *common, "--molecule", "H2O", "--max-steps", "5", "--output", str(out)],
    )
    assert result.exit_code == 0, result.output
    data = _finite_json(json.loads((out / "vibrations.json").read_text()))
    water = data["molecules"][0]
    assert water["name"] == "H2O" and water["metrics"]["n_modes"] == 3
    assert len(water["student"]["modes_cm1"]) == 3 and len(water["teacher"]["modes_cm1"]) == 3
    assert water["student"]["optimisation_steps"] <= 5
    assert (out / "vibrations.png").is_file()
    bad = runner.invoke(app, ["vibrations", *common, "--molecule", "NoSuchThing"])
    assert bad.exit_code == 2 and "NoSuchThing" in bad.output


@pytest.mark.slow  # SevenNet-0 on 64-atom Si: ~3 s per call on a busy 2-core CPU
def test_sevennet_si_phonons_against_itself():
    pytest.importorskip("sevenn")
    from jaxdistill.teachers import load_teacher

    teacher = load_teacher("sevennet:7net-0", device="cpu")
    si = ase.build.bulk("Si", "diamond", a=5.43, cubic=True)
    comparison = phonon_comparison(
        teacher.as_calculator(), teacher.as_calculator(), si, (2, 2, 2), dos_mesh=(10, 10, 10)
    )
    m = comparison.metrics()
    assert m["band_mae_thz"] == 0.0
    assert m["teacher_acoustic_gamma_max_thz"] < 0.05  # float32 forces
    # SevenNet-0's optical mode at Γ: 12.68 THz (measured 2026-11-30), softer than
    # experiment (15.5 THz) and PBE (~15 THz): the known softening of universal MLIPs
    optical = m["points"]["Γ"]["teacher_thz"][3]
    assert 12.0 < optical < 13.5
