"""Physics of every registered student with random parameters (float64).

Mirrors nequip's model tests: derivatives against finite differences, symmetries,
periodic images, padding and batching, smoothness at the cutoff.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import make_supercell
from scipy.spatial.transform import Rotation
from structures import ethanol, silicon, triclinic_si

from jaxdistill.graph import batch_graphs


def predict(student, structures, **capacities):
    """Energies [n], forces per structure, stresses [n, 3, 3] as numpy."""
    structures = list(structures)
    graph = student.graph(structures, **capacities)
    out = jax.device_get(student.predict(graph))
    n = len(structures)
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in structures])])
    forces = [out.forces[offsets[g] : offsets[g + 1]] for g in range(n)]
    return out.energy[:n], forces, out.stress[:n]


def energy_of(student, atoms) -> float:
    return float(predict(student, [atoms])[0][0])


@pytest.mark.parametrize("structure", [ethanol, silicon, triclinic_si])
def test_forces_equal_finite_differences(student64, structure):
    atoms = structure()
    _, (forces,), _ = predict(student64, [atoms])
    h = 1e-4
    rng = np.random.default_rng(0)
    for i in rng.choice(len(atoms), size=min(4, len(atoms)), replace=False):
        for k in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, k] += h
            minus.positions[i, k] -= h
            numeric = -(energy_of(student64, plus) - energy_of(student64, minus)) / (2 * h)
            assert forces[i, k] == pytest.approx(numeric, abs=1e-6, rel=1e-5)
    assert np.abs(forces).max() > 1e-3  # the test is not vacuous


@pytest.mark.parametrize("structure", [silicon, triclinic_si])
def test_stress_equals_finite_strain_derivative(student64, structure):
    atoms = structure()
    _, _, (stress,) = predict(student64, [atoms])
    volume = atoms.get_volume()
    h = 1e-5
    for a, b in [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]:
        strain = np.zeros((3, 3))
        strain[a, b] = strain[b, a] = h
        energies = []
        for sign in (1, -1):
            strained = atoms.copy()
            strained.set_cell(atoms.cell.array @ (np.eye(3) + sign * strain), scale_atoms=True)
            energies.append(energy_of(student64, strained))
        # d/dε_ab of a symmetric strain counts both off-diagonal entries
        numeric = (energies[0] - energies[1]) / (2 * h) / volume / (1 if a == b else 2)
        assert stress[a, b] == pytest.approx(numeric, abs=1e-8, rel=1e-5)
    assert np.allclose(stress, stress.T)
    assert np.abs(stress).max() > 1e-5


def test_molecule_has_zero_stress(student64):
    _, _, (stress,) = predict(student64, [ethanol()])
    assert np.all(stress == 0)


@pytest.mark.parametrize("structure", [ethanol, triclinic_si])
def test_rotation_translation_permutation(student64, structure):
    atoms = structure()
    energy, (forces,), (stress,) = predict(student64, [atoms])
    rotation = Rotation.from_euler("xyz", [0.3, -1.1, 2.0]).as_matrix()
    moved = atoms.copy()
    moved.positions = atoms.positions @ rotation.T + np.array([1.3, -0.4, 7.1])
    if atoms.pbc.any():
        moved.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    energy_r, (forces_r,), (stress_r,) = predict(student64, [moved])
    assert energy_r[0] == pytest.approx(energy[0], abs=1e-9)
    np.testing.assert_allclose(forces_r, forces @ rotation.T, atol=1e-9)
    np.testing.assert_allclose(stress_r, rotation @ stress @ rotation.T, atol=1e-10)

    order = np.random.default_rng(1).permutation(len(atoms))
    permuted = atoms[order]
    energy_p, (forces_p,), _ = predict(student64, [permuted])
    assert energy_p[0] == pytest.approx(energy[0], abs=1e-9)
    np.testing.assert_allclose(forces_p, forces[order], atol=1e-10)


@pytest.mark.parametrize("structure", [ethanol, silicon, triclinic_si])
def test_forces_sum_to_zero(student64, structure):
    _, (forces,), _ = predict(student64, [structure()])
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-10)


def test_primitive_cell_equals_supercell(student64):
    primitive = triclinic_si()
    supercell = primitive * (2, 2, 2)
    (e1, e8), (f1, f8), (s1, s8) = predict(student64, [primitive, supercell])
    assert e8 / 8 == pytest.approx(e1, abs=1e-10)
    np.testing.assert_allclose(f8, np.tile(f1, (8, 1)), atol=1e-10)
    np.testing.assert_allclose(s8, s1, atol=1e-12)


def test_rechosen_triclinic_cell(student64):
    atoms = triclinic_si() * (1, 2, 1)
    # the same lattice described by other (more skewed) cell vectors
    unimodular = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 1]])
    assert round(abs(np.linalg.det(unimodular))) == 1
    rechosen = make_supercell(atoms, unimodular)
    assert not np.allclose(rechosen.cell.array, atoms.cell.array)
    energy, (forces,), (stress,) = predict(student64, [atoms])
    energy_r, (forces_r,), (stress_r,) = predict(student64, [rechosen])
    assert energy_r[0] == pytest.approx(energy[0], abs=1e-9)
    np.testing.assert_allclose(stress_r, stress, atol=1e-11)
    # make_supercell keeps the atoms in order (one image of each), up to lattice vectors
    np.testing.assert_allclose(np.sort(forces_r, axis=0), np.sort(forces, axis=0), atol=1e-9)


def test_wrapping_changes_nothing(student64):
    atoms = silicon()
    unwrapped = atoms.copy()
    shifts = np.random.default_rng(2).integers(-2, 3, size=(len(atoms), 3))
    unwrapped.positions += shifts @ atoms.cell.array
    (e1, e2), (f1, f2), (s1, s2) = predict(student64, [atoms, unwrapped])
    assert e2 == pytest.approx(e1, abs=1e-9)
    np.testing.assert_allclose(f2, f1, atol=1e-10)
    np.testing.assert_allclose(s2, s1, atol=1e-12)


def test_padding_and_batching_change_nothing(student64):
    structures = [ethanol(), silicon(), triclinic_si(), ethanol(seed=3)]
    separate = [predict(student64, [a]) for a in structures]
    batched = predict(student64, structures)
    padded = predict(
        student64, structures, node_capacity=256, edge_capacity=8192, graph_capacity=16
    )
    for together in (batched, padded):
        for g, (energy, (forces,), (stress,)) in enumerate(separate):
            assert together[0][g] == pytest.approx(energy[0], abs=1e-10)
            np.testing.assert_allclose(together[1][g], forces, atol=1e-10)
            np.testing.assert_allclose(together[2][g], stress, atol=1e-12)


def test_gradients_do_not_leak_between_structures(student64):
    structures = [ethanol(), silicon(), triclinic_si()]
    graph = jax.tree_util.tree_map(jnp.asarray, student64.graph(structures))
    n0 = len(structures[0])

    def first_energy(positions):
        return student64.potential.energy(student64.params, graph._replace(positions=positions))[0]

    gradient = np.asarray(jax.jit(jax.grad(first_energy))(graph.positions))
    assert np.abs(gradient[:n0]).max() > 1e-3
    assert np.all(gradient[n0:] == 0.0)

    # and the parameter gradient is finite with padding (safe norms on padding edges)
    def total(params):
        return jnp.sum(student64.potential.predict(params, graph).forces ** 2)

    grads = jax.jit(jax.grad(total))(student64.params)
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(grads))


def test_smooth_as_neighbour_crosses_cutoff(student64):
    """Energy and forces go continuously to their no-neighbour values at the cutoff."""
    from ase import Atoms

    cutoff = student64.cutoff
    isolated = [
        energy_of(student64, Atoms("O", positions=[[0, 0, 0]])),
        energy_of(student64, Atoms("Si", positions=[[0, 0, 0]])),
    ]
    distances = cutoff + np.array([-1e-3, -1e-4, 0.0, 1e-4, 1e-3])
    energies, forces = [], []
    for r in distances:
        dimer = Atoms("OSi", positions=[[0, 0, 0], [r, 0, 0]])
        energy, (f,), _ = predict(student64, [dimer])
        energies.append(energy[0])
        forces.append(f[1, 0])
    energies = np.array(energies) - sum(isolated)
    assert np.all(np.abs(energies) < 1e-9)
    assert np.all(np.abs(forces) < 1e-6)
    # inside the cutoff the pair does interact
    dimer = Atoms("OSi", positions=[[0, 0, 0], [0.7 * cutoff, 0, 0]])
    assert abs(energy_of(student64, dimer) - sum(isolated)) > 1e-4


def test_float32_matches_float64(student64):
    atoms = silicon()
    student32 = student64.with_dtype("float32")
    e64, (f64,), _ = predict(student64, [atoms])
    e32, (f32,), _ = predict(student32, [atoms])
    assert student32.predict(batch_graphs([atoms], 4.0, dtype="float32")).forces.dtype == np.float32
    assert e32[0] == pytest.approx(e64[0], rel=1e-5, abs=1e-4)
    np.testing.assert_allclose(f32, f64, atol=1e-4)


def test_hessian_vector_product_equals_full_hessian(student64):
    """H·u by forward-over-reverse equals jax.hessian of the energy contracted with u,
    for every structure of a padded batch at once (periodic Si and a molecule)."""
    import ase.build

    water = ase.build.molecule("H2O")
    water.rattle(0.05, seed=4)
    structures = [silicon(cubic=False, rattle=0.05, seed=3), water]
    graph = student64.graph(structures, node_capacity=8, graph_capacity=4)
    params = student64.params
    potential = student64.potential
    n_real = sum(len(a) for a in structures)
    rng = np.random.default_rng(0)
    directions = np.zeros(graph.positions.shape)
    directions[:n_real] = rng.normal(size=(n_real, 3))
    directions[n_real:] = 7.0  # padding rows must not matter

    product = jax.jit(potential.hessian_vector_product)(params, graph, jnp.asarray(directions))

    def total_energy(positions):
        energies = potential.energy(params, graph._replace(positions=positions))
        return jnp.sum(jnp.where(graph.graph_mask, energies, 0.0))

    hessian = jax.jit(jax.hessian(total_energy))(jnp.asarray(graph.positions))  # [n, 3, n, 3]
    masked = np.where(np.asarray(graph.node_mask)[:, None], directions, 0.0)
    expected = np.einsum("iajb,jb->ia", np.asarray(hessian), masked)
    expected[n_real:] = 0.0
    np.testing.assert_allclose(np.asarray(product), expected, rtol=1e-9, atol=1e-10)
    # Structures do not couple: the silicon rows see only silicon's directions.
    n_si = len(structures[0])
    only_si = np.where(np.arange(len(directions))[:, None] < n_si, masked, 0.0)
    product_si = potential.hessian_vector_product(params, graph, jnp.asarray(only_si))
    np.testing.assert_allclose(np.asarray(product_si)[n_si:], 0.0, atol=1e-12)


def test_smooth_at_a_perfect_crystal(student64):
    """At a perfect crystal every atom's vector features vanish by symmetry; the energy
    must stay smooth there: the autodiff H·e equals central differences of the forces
    (a cusp, as from a barely softened norm, makes them differ by orders of magnitude
    and the phonons imaginary)."""
    crystal = silicon(rattle=0.0)
    graph = student64.graph(crystal)
    e = np.zeros(graph.positions.shape)
    e[0, 0] = 1.0
    product = np.asarray(
        jax.jit(student64.potential.hessian_vector_product)(student64.params, graph, jnp.asarray(e))
    )[0]
    h = 1e-4
    forces = []
    for sign in (1.0, -1.0):
        moved = crystal.copy()
        moved.positions[0, 0] += sign * h
        forces.append(predict(student64, [moved])[1][0][0])
    difference = -(forces[0] - forces[1]) / (2 * h)
    np.testing.assert_allclose(product, difference, rtol=1e-5, atol=1e-6)


def test_painn_saved_without_norm_softening_loads_as_trained():
    """Students saved before ``norm_softening`` existed were trained with
    sqrt(|w|² + 1e-8): a module built without the key must use that; new students
    record theirs (1.0)."""
    from jaxdistill.models import build_model
    from jaxdistill.models.painn import LEGACY_NORM_SOFTENING, NORM_SOFTENING
    from jaxdistill.student import create_student

    assert build_model("painn", [14], 4.0).norm_softening == LEGACY_NORM_SOFTENING
    student = create_student("painn", ["Si"], cutoff=4.0, features=8, num_layers=1)
    assert student.hyperparameters["norm_softening"] == NORM_SOFTENING
    assert "norm_softening" not in create_student("schnet", ["Si"], features=8).hyperparameters


def test_receiver_major_graphs_give_atomic_energies_but_refuse_hessian_products(student64):
    """Per-atom energies equal the edge list's; a Hessian-vector product (forward mode)
    on a receiver-major graph is refused by name instead of failing inside JAX."""
    from jaxdistill.graph import neighbour_pairs, slots_for

    atoms = silicon(cubic=False, rattle=0.05, seed=2)
    neighbours = [neighbour_pairs(atoms, student64.cutoff)]
    plain = batch_graphs([atoms], student64.cutoff, neighbours=neighbours, dtype="float64")
    major = batch_graphs(
        [atoms],
        student64.cutoff,
        neighbours=neighbours,
        dtype="float64",
        slots_per_node=slots_for(neighbours),
    )
    potential, params = student64.potential, student64.params
    np.testing.assert_allclose(
        potential.atomic_energies(params, major),
        potential.atomic_energies(params, plain),
        rtol=0,
        atol=1e-12,
    )
    with pytest.raises(ValueError, match="edge-list graph"):
        potential.hessian_vector_product(params, major, np.ones_like(major.positions))
