"""FeNNol ANI-1x (from ../shared): store labels equal FENNIXCalculator's; ensembles."""

from __future__ import annotations

import ase
import ase.build
import numpy as np
import pytest

from jaxdistill.data import LabelStore
from jaxdistill.labelling import label
from jaxdistill.teachers import EnsembleTeacher, load_teacher

pytest.importorskip("fennol", reason="fennol not installed (pip install 'jaxdistill[fennol]')")


# FeNNol compiles (JAX) for every new molecule size and neighbour-list capacity, a few
# seconds each on this CPU, so the tests share teachers and reference calculators and
# use few distinct molecules.


def molecules() -> list[ase.Atoms]:
    """Ethanol, water, ethanol again: a different molecule in between exercises the
    teacher's reset of FeNNol's neighbour-list state."""
    ethanol = ase.build.molecule("CH3CH2OH")
    ethanol.rattle(0.05, seed=0)
    water = ase.build.molecule("H2O")
    water.rattle(0.03, seed=1)
    return [ethanol, water, ethanol.copy()]


_REFERENCE_CALCULATORS: dict[tuple[str, str], object] = {}


def reference_labels(path, atoms):
    """Energy and forces from the teacher's own ASE calculator, FENNIXCalculator(path)
    (one calculator per model and molecule, as a user would attach it)."""
    from fennol.ase import FENNIXCalculator

    key = (str(path), atoms.get_chemical_formula())
    if key not in _REFERENCE_CALCULATORS:
        _REFERENCE_CALCULATORS[key] = FENNIXCalculator(str(path))
    ref = atoms.copy()
    ref.calc = _REFERENCE_CALCULATORS[key]
    return ref.get_potential_energy(), ref.get_forces()


@pytest.fixture(scope="module")
def model0(fennol_ani1x):
    return fennol_ani1x / "ani1x_model0.fnx"


@pytest.fixture(scope="module")
def teacher0(model0):
    return load_teacher(f"fennol:{model0}")


def test_store_labels_equal_fennix_calculator(model0, teacher0, tmp_path):
    frames = molecules()
    label(teacher0, frames, tmp_path / "mol.h5", progress=False)
    with LabelStore(tmp_path / "mol.h5") as store:
        assert len(store) == len(frames)
        for atoms, stored in zip(frames, store, strict=True):
            energy, forces = reference_labels(model0, atoms)
            assert stored.get_potential_energy() == pytest.approx(energy, abs=2e-5)
            np.testing.assert_allclose(stored.get_forces(), forces, atol=2e-5)
            assert "stress" not in stored.calc.results  # molecules: no stress label
        prov = store.teacher
    assert prov["package"] == "fennol" and prov["model_energy_unit"] == "Ha"
    # ANI energies are in eV after conversion (ethanol is about -4.2 keV).
    with LabelStore(tmp_path / "mol.h5") as store:
        assert -4300 < store[0].get_potential_energy() < -4100


def test_ensemble_of_one_model_twice_has_zero_disagreement(model0, teacher0):
    twice = load_teacher(f"fennol:{model0},{model0}")
    assert isinstance(twice, EnsembleTeacher) and len(twice.members) == 2
    frames = molecules()[:1]
    for lab, ref in zip(twice.label(frames), teacher0.label(frames), strict=True):
        assert lab.force_disagreement == 0.0
        assert lab.energy_disagreement == 0.0
        np.testing.assert_allclose(lab.forces, ref.forces, atol=1e-6)


@pytest.mark.slow
def test_two_member_ensemble_is_the_mean_with_its_spread(fennol_ani1x, tmp_path):
    paths = [fennol_ani1x / f"ani1x_model{i}.fnx" for i in (0, 1)]
    teacher = load_teacher(f"fennol:{fennol_ani1x}/ani1x_model[01].fnx")  # a glob
    assert teacher.provenance()["ensemble_size"] == 2
    atoms = molecules()[0]
    lab = teacher.label([atoms])[0]
    (e0, f0), (e1, f1) = (reference_labels(p, atoms) for p in paths)
    np.testing.assert_allclose(lab.forces, (f0 + f1) / 2, atol=2e-5)
    assert lab.energy == pytest.approx((e0 + e1) / 2, abs=2e-5)
    spread = np.sqrt(np.mean(np.sum(((f0 - f1) / 2) ** 2, axis=1)))
    assert lab.force_disagreement == pytest.approx(spread, rel=1e-3, abs=1e-5)
    assert lab.force_disagreement > 1e-3
    # Disagreement is stored too.
    label(teacher, [atoms], tmp_path / "ens.h5", progress=False)
    with LabelStore(tmp_path / "ens.h5") as store:
        assert store.arrays().force_disagreement[0] == pytest.approx(lab.force_disagreement)


@pytest.mark.slow  # every strained cell changes FeNNol's neighbour capacities: recompiles
def test_periodic_stress_matches_finite_differences(teacher0, fd_stress):
    teacher = teacher0
    box = ase.build.molecule("CH4")
    box.cell = [6.0, 6.2, 5.8]
    box.pbc = True
    box.center()
    box.rattle(0.03, seed=2)
    stress = teacher.label([box])[0].stress
    expected = fd_stress(lambda fs: [x.energy for x in teacher.label(fs)], box, delta=2e-3)
    np.testing.assert_allclose(stress, expected, atol=2e-4)


def test_missing_fennol_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.fnx"):
        load_teacher(f"fennol:{tmp_path / 'absent.fnx'}")
    with pytest.raises(FileNotFoundError, match="matched no file"):
        load_teacher(f"fennol:{tmp_path}/none*.fnx")


def test_upstream_neighbour_list_error_is_redone_from_a_fresh_state(model0, monkeypatch):
    """FeNNol's incremental neighbour lists can raise ``max_neigh*nat < nedge`` along a
    hot trajectory; the teacher redoes that call from scratch. The error is injected
    here (it takes thousands of 600 K steps to meet it naturally)."""
    teacher = load_teacher(f"fennol:{model0}")
    atoms = molecules()[0]
    energy, _ = reference_labels(model0, atoms)
    calc = teacher.calculator
    original = calc.calculate
    fresh_state_at_call: list[bool] = []

    def flaky(*args, **kwargs):
        fresh_state_at_call.append(calc._raw_inputs is None)
        if len(fresh_state_at_call) == 2:  # the first call warms up, the second fails
            raise ValueError("Found max_neigh*nat < nedge. This should not happen.")
        return original(*args, **kwargs)

    monkeypatch.setattr(calc, "calculate", flaky)
    teacher.label([atoms])
    moved = atoms.copy()
    moved.positions[0] += 0.01
    energy_moved, forces_moved = reference_labels(model0, moved)
    (redone,) = teacher.label([moved])
    assert fresh_state_at_call[1:] == [False, True]  # failed incrementally, redone fresh
    assert redone.energy == pytest.approx(energy_moved, abs=2e-5)
    np.testing.assert_allclose(redone.forces, forces_moved, atol=2e-5)
    assert abs(energy_moved - energy) > 1e-4  # the structures differ: not a cached result

    def broken(*args, **kwargs):
        raise ValueError("some other FeNNol failure")

    monkeypatch.setattr(calc, "calculate", broken)
    moved.positions[0] += 0.01
    with pytest.raises(ValueError, match="some other"):
        teacher.label([moved])


def test_labels_along_an_md_trajectory_equal_fresh_evaluations(model0):
    """Teacher MD moves atoms a little each step; every label must equal a from-scratch
    evaluation (fennol's incremental preprocessing, off by default, did not)."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta
    from fennol.ase import FENNIXCalculator

    teacher = load_teacher(f"fennol:{model0}")
    fresh = FENNIXCalculator(str(model0), gpu_preprocessing=False)
    atoms = ase.build.molecule("CH3CH2OH")
    atoms.center(vacuum=6.0)
    atoms.calc = teacher.as_calculator()
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dynamics = Langevin(
        atoms,
        0.5 * units.fs,
        temperature_K=300,
        friction=0.02 / units.fs,
        fixcm=False,
        rng=np.random.default_rng(1),
    )
    for _ in range(6):  # the incremental path went wrong within the first 50 steps
        dynamics.run(25)
        reference = atoms.copy()
        reference.calc = fresh
        fresh.reset()
        fresh._raw_inputs = None  # preprocess from scratch
        np.testing.assert_allclose(atoms.get_forces(), reference.get_forces(), atol=1e-4)
        assert atoms.get_potential_energy() == pytest.approx(
            reference.get_potential_energy(), abs=1e-4
        )


def test_a_molecule_met_again_keeps_its_shapes(model0):
    """The teacher keeps FeNNol's preprocessing state (padded neighbour-list sizes) per
    system: coming back to a molecule after another one reuses the sizes it had, so
    nothing compiles again (a fresh state sized to the frame at hand would give a new
    shape, and a compilation, at many frames of a mixed data set)."""
    from jaxdistill.diagnostics import count_compilations

    teacher = load_teacher(f"fennol:{model0}")
    ethanol, water, _ = molecules()
    squeezed = ethanol.copy()  # more pairs within the cutoffs: larger padded sizes
    squeezed.positions = squeezed.positions.mean(axis=0) + 0.85 * (
        squeezed.positions - squeezed.positions.mean(axis=0)
    )
    teacher.label([squeezed, ethanol, water])
    with count_compilations() as compiled:
        (again,) = teacher.label([ethanol])
    assert compiled.count == 0
    energy, forces = reference_labels(model0, ethanol)
    assert again.energy == pytest.approx(energy, abs=2e-5)
    np.testing.assert_allclose(again.forces, forces, atol=2e-5)
