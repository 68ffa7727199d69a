"""Autodiff Hessian-vector products of the teachers against their own forces.

For each teacher with ``hessian_vector_products`` (SevenNet, FeNNol, Orb conservative,
ensembles of them), ``H·u`` must equal central finite differences of the teacher's own
forces, ``-(F(R + h u) - F(R - h u)) / (2h)``, and ``u·(H v)`` must equal ``v·(H u)``.
The steps and tolerances come from benchmarks/hvp_fd_step.py: float32 teachers resolve
the products to about 1e-4 of their largest entry at h = 1e-3..3e-3 Å. FeNNol ANI-1x needs
the smaller step: its cosine cutoffs have a discontinuous second derivative, and a step of
0.01 Å already makes some pair of ethanol cross the 3.5 Å angular cutoff (3% error).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ase
import ase.build
import numpy as np
import pytest
from ase.calculators.emt import EMT

from jaxdistill.teachers import AseTeacher, EnsembleTeacher, load_teacher
from jaxdistill.teachers.hessian import labels_and_hessian


def unit_directions(n_atoms: int, k: int, seed: int) -> np.ndarray:
    """``k`` random unit directions over ``3 n_atoms`` coordinates, ``[k, n_atoms, 3]``."""
    u = np.random.default_rng(seed).standard_normal((k, n_atoms, 3))
    return u / np.linalg.norm(u.reshape(k, -1), axis=1)[:, None, None]


def fd_hvp(teacher: Any, atoms: ase.Atoms, directions: np.ndarray, h: float) -> np.ndarray:
    """``-(F(R + h u) - F(R - h u)) / (2h)`` from ``teacher.label``, ``[k, n, 3]`` eV/Å²."""
    frames = []
    for u in directions:
        for sign in (1.0, -1.0):
            moved = atoms.copy()
            moved.positions = atoms.positions + sign * h * u
            frames.append(moved)
    forces = np.stack([lab.forces for lab in teacher.label(frames)])
    return -(forces[0::2] - forces[1::2]) / (2.0 * h)


def check_against_fd(
    teacher: Any, atoms: ase.Atoms, h: float, rtol: float, k: int = 3, seed: int = 0
) -> np.ndarray:
    """Assert autodiff ``H·u`` == FD of the forces (to ``rtol`` of the largest entry),
    its shape, dtype and symmetry; return it."""
    directions = unit_directions(len(atoms), k, seed)
    before = atoms.positions.copy()
    exact = teacher.hessian_vector_products(atoms, directions)
    np.testing.assert_array_equal(atoms.positions, before)  # the frame is not modified
    assert exact.shape == (k, len(atoms), 3) and exact.dtype == np.float64
    scale = np.abs(exact).max()
    assert scale > 1e-3  # a real curvature, not an all-zero answer
    np.testing.assert_allclose(fd_hvp(teacher, atoms, directions, h), exact, atol=rtol * scale)
    # u_i·(H u_j) is symmetric in i, j (H is the Hessian of one energy).
    gram = np.einsum("kij,lij->kl", directions, exact)
    np.testing.assert_allclose(gram, gram.T, atol=rtol * np.abs(gram).max())
    return exact


def silicon8() -> ase.Atoms:
    """8-atom cubic Si diamond cell, rattled (periodic; the cell is smaller than twice
    SevenNet's 5 Å cutoff, so atoms see several images of each other)."""
    atoms = ase.build.bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.05, seed=0)
    return atoms


def ethanol() -> ase.Atoms:
    atoms = ase.build.molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=0)
    return atoms


# ---------------------------------------------------------------------------- SevenNet


@pytest.fixture(scope="module")
def sevennet() -> Any:
    pytest.importorskip(
        "sevenn", reason="sevenn not installed (pip install 'jaxdistill[sevennet]')"
    )
    return load_teacher("sevennet:7net-0")


@pytest.mark.parametrize("structure", [silicon8, ethanol], ids=["si8-periodic", "ethanol"])
def test_sevennet_hvp_equals_finite_differences(sevennet: Any, structure: Callable) -> None:
    check_against_fd(sevennet, structure(), h=2e-3, rtol=5e-3)


def test_sevennet_hvp_is_translation_invariant_and_batches(sevennet: Any) -> None:
    atoms = silicon8()
    directions = unit_directions(len(atoms), 3, seed=1)
    all_at_once = sevennet.hessian_vector_products(atoms, directions)
    one_by_one = np.concatenate(
        [sevennet.hessian_vector_products(atoms, directions[i : i + 1]) for i in range(3)]
    )
    np.testing.assert_allclose(all_at_once, one_by_one, atol=1e-5)
    # A uniform translation changes no force: H·t = 0 for t = (1, 0, 0) on every atom.
    translation = np.zeros((1, len(atoms), 3))
    translation[0, :, 0] = 1.0 / np.sqrt(len(atoms))
    ht = sevennet.hessian_vector_products(atoms, translation)
    assert np.abs(ht).max() < 1e-4 * np.abs(all_at_once).max()
    with pytest.raises(ValueError, match="shape"):
        sevennet.hessian_vector_products(atoms, directions[:, :4])


# ------------------------------------------------------------------------------ FeNNol


@pytest.fixture(scope="module")
def fennol0(fennol_ani1x) -> Any:
    """ANI-1x model 0 (float32), shared: FeNNol compiles for each new teacher and shape."""
    pytest.importorskip("fennol", reason="fennol not installed (pip install 'jaxdistill[fennol]')")
    return load_teacher(f"fennol:{fennol_ani1x / 'ani1x_model0.fnx'}")


def test_fennol_hvp_equals_finite_differences(fennol0: Any) -> None:
    atoms = ethanol()
    before = fennol0.label([atoms])[0]
    # h = 1e-3 Å: see the module docstring for why not 1e-2.
    exact = check_against_fd(fennol0, atoms, h=1e-3, rtol=3e-3)
    # eV/Å², not Hartree/Å²: the stiffest directions of ethanol give tens of eV/Å².
    assert 5.0 < np.abs(exact).max() < 500.0
    # The Hessian call left the calculator's state consistent: same labels as before.
    after = fennol0.label([atoms])[0]
    assert after.energy == pytest.approx(before.energy, abs=1e-6)
    np.testing.assert_allclose(after.forces, before.forces, atol=1e-6)


def test_ensemble_hvp_is_the_members_mean(fennol0: Any, sevennet: Any) -> None:
    # Two different force fields that both know H, C, O (and are already compiled).
    ensemble = EnsembleTeacher([fennol0, sevennet])
    atoms = ethanol()
    # Three directions, as in the tests above: FeNNol compiles once per K.
    directions = unit_directions(len(atoms), 3, seed=3)
    members = [m.hessian_vector_products(atoms, directions) for m in ensemble.members]
    assert np.abs(members[0] - members[1]).max() > 1e-2
    mean = ensemble.hessian_vector_products(atoms, directions)
    # FeNNol runs in float32: two evaluations of one input may differ in the last bits
    # (3e-8 eV/Å² seen when this test ran first in its pytest-xdist worker), far below
    # the members' 1e-2 disagreement that a wrong combination would show.
    scale = float(np.abs(members[0]).max())
    np.testing.assert_allclose(mean, 0.5 * (members[0] + members[1]), rtol=0, atol=1e-6 * scale)


def test_fennol_labels_with_hessian_equal_the_separate_calls(fennol0: Any) -> None:
    """One linearisation gives the label call's energy and forces and the products of
    ``hessian_vector_products``; so does an ensemble (here one model twice, already
    compiled), whose labels are then combined as ``label`` combines them."""
    atoms = ethanol()
    directions = unit_directions(len(atoms), 3, seed=3)
    separate = fennol0.label([atoms])[0]
    products = fennol0.hessian_vector_products(atoms, directions)
    merged, merged_products = fennol0.label_with_hessian(atoms, directions)
    assert merged.energy == pytest.approx(separate.energy, abs=1e-5)
    np.testing.assert_allclose(merged.forces, separate.forces, rtol=0, atol=1e-5)
    assert not merged.has_stress
    scale = float(np.abs(products).max())
    np.testing.assert_allclose(merged_products, products, rtol=0, atol=1e-6 * scale)
    ensemble = EnsembleTeacher([fennol0, fennol0])
    labels, mean = labels_and_hessian(ensemble, [atoms], [directions], method="autodiff")
    assert labels[0].energy == pytest.approx(separate.energy, abs=1e-5)
    assert labels[0].force_disagreement == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(mean[0], products, rtol=0, atol=1e-6 * scale)


def assert_merged_equal_separate(
    teacher: Any, atoms: ase.Atoms, directions: np.ndarray, atol_forces: float
) -> None:
    """``teacher.label_with_hessian`` gives the labels of ``teacher.label`` and the
    products of ``teacher.hessian_vector_products``, to float32 rounding; so does
    ``labels_and_hessian`` on either path."""
    separate = teacher.label([atoms])[0]
    products = teacher.hessian_vector_products(atoms, directions)
    merged, merged_products = teacher.label_with_hessian(atoms, directions)
    assert merged.energy == pytest.approx(separate.energy, abs=1e-5)
    np.testing.assert_allclose(merged.forces, separate.forces, rtol=0, atol=atol_forces)
    assert merged.has_stress == separate.has_stress
    if separate.has_stress:
        np.testing.assert_allclose(merged.stress, separate.stress, rtol=0, atol=1e-6)
    scale = float(np.abs(products).max())
    assert scale > 1e-3
    np.testing.assert_allclose(merged_products, products, rtol=0, atol=1e-5 * scale)
    for merge in (True, False):
        labels, out = labels_and_hessian(teacher, [atoms], [directions], merged=merge)
        assert labels[0].energy == pytest.approx(separate.energy, abs=1e-5)
        np.testing.assert_allclose(out[0], products, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("structure", [silicon8, ethanol], ids=["si8-periodic", "ethanol"])
def test_sevennet_labels_with_hessian_equal_the_separate_calls(
    sevennet: Any, structure: Callable
) -> None:
    """One forward pass gives SevenNetCalculator's energy, forces and (periodic) stress
    and the products of the double backward."""
    atoms = structure()
    assert_merged_equal_separate(sevennet, atoms, unit_directions(len(atoms), 2, seed=4), 1e-5)


def test_labels_and_hessian_without_a_merged_path_call_both() -> None:
    # finite differences never take the merged path
    ensemble = EnsembleTeacher([AseTeacher(EMT()), AseTeacher(EMT())])
    assert not hasattr(ensemble, "label_with_hessian")
    copper = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True)
    copper.rattle(0.05, seed=0)
    labels, products = labels_and_hessian(
        ensemble, [copper], [unit_directions(len(copper), 1, seed=5)], step_angstrom=1e-3
    )
    assert labels[0].has_stress and products[0].shape == (1, len(copper), 3)


@pytest.mark.slow
def test_fennol_ani1x_ensemble_hvp_equals_finite_differences(fennol_ani1x) -> None:
    pytest.importorskip("fennol", reason="fennol not installed (pip install 'jaxdistill[fennol]')")
    paths = [fennol_ani1x / f"ani1x_model{i}.fnx" for i in (0, 1)]
    ensemble = load_teacher(f"fennol:{paths[0]},{paths[1]}")
    assert isinstance(ensemble, EnsembleTeacher)
    check_against_fd(ensemble, ethanol(), h=1e-3, rtol=3e-3, k=2)


def test_ensemble_without_member_hvp_has_no_method() -> None:
    ensemble = EnsembleTeacher([AseTeacher(EMT()), AseTeacher(EMT())])
    assert not hasattr(ensemble, "hessian_vector_products")
    assert getattr(ensemble, "hessian_vector_products", None) is None


# --------------------------------------------------------------------------------- Orb


@pytest.fixture(scope="module")
def orb_weights(tmp_path_factory) -> dict[str, Any]:
    """Random full-size Orb-v3 weights saved to disk (as tests/teachers/test_teacher_orb.py)."""
    torch = pytest.importorskip("torch", reason="torch not installed")
    pytest.importorskip("orb_models", reason="orb-models not installed")
    from orb_models.forcefield import pretrained

    folder = tmp_path_factory.mktemp("orb-hvp")
    dtype = torch.get_default_dtype()
    paths = {}
    try:
        for kind, build in (
            ("conservative", pretrained.orb_v3_conservative_architecture),
            ("direct", pretrained.orb_v3_direct_architecture),
        ):
            torch.manual_seed(0)
            paths[kind] = folder / f"orb-v3-{kind}-random.ckpt"
            torch.save(build(device="cpu").state_dict(), paths[kind])
    finally:
        torch.set_default_dtype(dtype)
    return paths


def test_orb_conservative_hvp_equals_finite_differences(orb_weights) -> None:
    teacher = load_teacher(f"orb:orb-v3-conservative-inf-omat@{orb_weights['conservative']}")
    check_against_fd(teacher, silicon8(), h=1e-2, rtol=3e-3)
    # The model is back in eval mode and labels as before.
    assert not teacher.model.training


def test_orb_conservative_labels_with_hessian_equal_the_separate_calls(orb_weights) -> None:
    teacher = load_teacher(f"orb:orb-v3-conservative-inf-omat@{orb_weights['conservative']}")
    atoms = silicon8()
    assert_merged_equal_separate(teacher, atoms, unit_directions(len(atoms), 2, seed=4), 1e-4)
    assert not teacher.model.training


def test_orb_direct_has_no_autodiff_hvp(orb_weights) -> None:
    teacher = load_teacher(f"orb:orb-v3-direct-20-omat@{orb_weights['direct']}")
    assert not hasattr(teacher, "hessian_vector_products")
    assert not hasattr(teacher, "label_with_hessian")


@pytest.mark.parametrize(
    "batched",
    [True, False, {"cpu": True}, {"cuda": True}],
    ids=["batched", "per-direction", "batched-on-cpu", "batched-on-cuda-only"],
)
def test_minus_batched_vjp_is_the_hessian_times_u(batched: Any, monkeypatch) -> None:
    """Both double-backward modes (chosen directly or by device type) give ``H·u`` of an
    energy whose Hessian is known: ``E = ½ Σ_ij k_ij (x_i − x_j)² + Σ_i x_i⁴``
    componentwise, in float64."""
    torch = pytest.importorskip("torch", reason="torch not installed")
    from jaxdistill.teachers.hessian import minus_batched_vjp

    rng = np.random.default_rng(0)
    n = 5
    k = rng.uniform(0.5, 2.0, (n, n))
    k = (k + k.T) / 2
    np.fill_diagonal(k, 0.0)
    x = rng.normal(size=(n, 3))
    positions = torch.tensor(x, requires_grad=True)
    diff = positions[:, None, :] - positions[None, :, :]
    energy = 0.25 * (torch.tensor(k)[:, :, None] * diff**2).sum() + (positions**4).sum()
    (gradient,) = torch.autograd.grad(energy, positions, create_graph=True)
    directions = unit_directions(n, 3, seed=7)
    monkeypatch.delenv("JAXDISTILL_HVP_BATCHED", raising=False)
    passes = []
    grad = torch.autograd.grad

    def counted(*args, **kwargs):
        passes.append(kwargs.get("is_grads_batched", False))
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counted)
    products = minus_batched_vjp(-gradient, positions, directions, batched=batched)
    vmapped = batched is True or (isinstance(batched, dict) and batched.get("cpu", False))
    assert passes == ([True] if vmapped else [False] * 3)
    # The Hessian per Cartesian component: graph Laplacian of k plus diag(12 x²).
    laplacian = np.diag(k.sum(axis=1)) - k
    expected = np.einsum("ij,ajc->aic", laplacian, directions) + 12 * x**2 * directions
    np.testing.assert_allclose(products, expected, rtol=1e-12, atol=1e-12)
    # The environment variable overrides the teacher's choice, either way.
    for setting, mode in (("1", [True]), ("0", [False] * 3)):
        monkeypatch.setenv("JAXDISTILL_HVP_BATCHED", setting)
        passes.clear()
        again = minus_batched_vjp(-gradient, positions, directions, batched=not mode[0])
        assert passes == mode
        np.testing.assert_allclose(again, expected, rtol=1e-12, atol=1e-12)
