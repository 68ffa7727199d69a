"""Teacher protocol, load_teacher parsing and errors, ASE teachers, ensembles."""

from __future__ import annotations

import subprocess
import sys

import ase.build
import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones

from jaxdistill.teachers import (
    AseTeacher,
    EnsembleTeacher,
    Teacher,
    TeacherCalculator,
    combine_ensemble,
    load_teacher,
)

EMT_SPEC = "ase:ase.calculators.emt:EMT"


def copper(seed: int = 0, repeat=(1, 1, 1)) -> ase.Atoms:
    atoms = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True) * repeat
    atoms.rattle(0.05, seed=seed)
    return atoms


def test_import_does_not_load_torch_or_teacher_packages():
    code = (
        "import sys, jaxdistill.teachers, jaxdistill.data, jaxdistill.sampling, "
        "jaxdistill.cli.data, jaxdistill.labelling\n"
        "bad = [m for m in ('torch', 'orb_models', 'fennol', 'sevenn') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported eagerly: {out.stdout.strip()}"


def test_ase_spec_labels_equal_the_calculator_itself():
    teacher = load_teacher(EMT_SPEC)
    assert isinstance(teacher, Teacher)
    frames = [copper(0), copper(1, (2, 1, 1)), ase.build.molecule("CH4")]
    labels = teacher.label(frames)
    for atoms, lab in zip(frames, labels, strict=True):
        ref = atoms.copy()
        ref.calc = EMT()
        assert lab.energy == pytest.approx(ref.get_potential_energy(), abs=1e-12)
        np.testing.assert_allclose(lab.forces, ref.get_forces(), atol=1e-12)
        if all(atoms.pbc):
            np.testing.assert_allclose(lab.stress, ref.get_stress(), atol=1e-12)
            assert lab.has_stress
        else:
            assert np.all(np.isnan(lab.stress)) and not lab.has_stress
        assert np.isnan(lab.force_disagreement)
    # Inputs are not modified (no calculator attached).
    assert frames[0].calc is None


def test_emt_stress_sign_is_ase_convention(fd_stress):
    teacher = load_teacher(EMT_SPEC)
    atoms = copper(3)
    atoms.set_cell(
        atoms.cell.array @ np.array([[1.01, 0.004, 0], [0.004, 0.99, 0], [0, 0, 1]]),
        scale_atoms=True,
    )
    expected = fd_stress(lambda fs: [x.energy for x in teacher.label(fs)], atoms, delta=1e-4)
    np.testing.assert_allclose(teacher.label([atoms])[0].stress, expected, atol=2e-6)


def test_calculator_instance_and_teacher_passthrough():
    teacher = load_teacher(EMT())
    assert isinstance(teacher, AseTeacher)
    assert load_teacher(teacher) is teacher
    prov = teacher.provenance()
    for key in ("name", "package", "version", "weights", "weights_sha256", "precision", "device"):
        assert key in prov
    assert prov["package"] == "ase" and prov["device"] == "cpu"


def test_as_calculator_drives_ase():
    teacher = load_teacher(EMT_SPEC)
    atoms = copper(4)
    calc = teacher.as_calculator()
    assert isinstance(calc, TeacherCalculator)
    atoms.calc = calc
    lab = teacher.label([atoms])[0]
    np.testing.assert_allclose(atoms.get_forces(), lab.forces)
    np.testing.assert_allclose(atoms.get_stress(), lab.stress)
    assert atoms.get_potential_energy() == pytest.approx(lab.energy)
    atoms.positions[0] += 0.05  # a new structure gives new results
    assert atoms.get_potential_energy() != pytest.approx(lab.energy)


@pytest.mark.parametrize(
    ("spec", "error", "text"),
    [
        ("nonsense", ValueError, "cannot parse"),
        ("gaussian:foo", ValueError, "unknown teacher kind"),
        ("ase:no.such.module:Calc", ImportError, "no.such.module"),
        ("ase:ase.calculators.emt:NoSuchFactory", ValueError, "NoSuchFactory"),
        ("ase:EMT", ValueError, "ase:<module>:<factory>"),
    ],
)
def test_bad_specs_give_clear_errors(spec, error, text):
    with pytest.raises(error, match=text):
        load_teacher(spec)


@pytest.mark.parametrize(
    ("spec", "blocked", "extra"),
    [
        ("orb:orb-v3-direct-20-omat@{weights}", "orb_models", "orb"),
        ("fennol:{weights}", "fennol", "fennol"),
        ("sevennet:7net-0", "sevenn", "sevennet"),
    ],
)
def test_missing_extra_says_what_to_install(spec, blocked, extra, tmp_path):
    # A fresh interpreter in which the package cannot be imported (None in sys.modules
    # makes Python's import system refuse it, exactly as when it is not installed).
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"")
    spec = spec.format(weights=weights)
    code = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "from jaxdistill.teachers import load_teacher\n"
        f"load_teacher({spec!r})\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError"), out.stderr[-2000:]
    assert f"pip install 'jaxdistill[{extra}]'" in last
    # One short error, not a chain of upstream tracebacks.
    assert "During handling of the above exception" not in out.stderr


def test_ensemble_of_identical_members_has_zero_disagreement():
    teacher = EnsembleTeacher([load_teacher(EMT_SPEC), load_teacher(EMT())])
    frames = [copper(5), copper(6)]
    single = load_teacher(EMT_SPEC).label(frames)
    for lab, ref in zip(teacher.label(frames), single, strict=True):
        assert lab.force_disagreement == 0.0
        assert lab.energy_disagreement == 0.0
        np.testing.assert_allclose(lab.forces, ref.forces, atol=1e-12)
        assert lab.energy == pytest.approx(ref.energy, abs=1e-12)
    assert teacher.provenance()["ensemble_size"] == 2


def test_ensemble_disagreement_definition():
    emt, lj = load_teacher(EMT()), load_teacher(LennardJones(sigma=2.3, epsilon=0.4, rc=5.0))
    teacher = EnsembleTeacher([emt, lj], name="mixed")
    atoms = copper(7)
    lab = teacher.label([atoms])[0]
    a, b = emt.label([atoms])[0], lj.label([atoms])[0]
    # Two members: the std of each force vector about the mean is |F_a - F_b| / 2.
    per_atom_std = np.linalg.norm(a.forces - b.forces, axis=1) / 2
    assert lab.force_disagreement == pytest.approx(np.sqrt(np.mean(per_atom_std**2)), rel=1e-12)
    assert lab.energy_disagreement == pytest.approx(abs(a.energy - b.energy) / 2, rel=1e-12)
    np.testing.assert_allclose(lab.forces, (a.forces + b.forces) / 2)
    np.testing.assert_allclose(lab.stress, (a.stress + b.stress) / 2)
    assert lab.force_disagreement > 0.01
    # combine_ensemble is the same function used inside.
    assert combine_ensemble([a, b]).force_disagreement == lab.force_disagreement
