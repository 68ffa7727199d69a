"""The jax-md adapter: same numbers as the ASE calculator, jax-md scripts run unchanged."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import units
from structures import ethanol, silicon

from jaxdistill import StudentCalculator
from jaxdistill.md.jaxmd import default_disable_cell_list, jax_md_potential

jax_md = pytest.importorskip("jax_md")
from jax_md import quantity, simulate, space  # noqa: E402


def _ase_reference(atoms, student):
    atoms = atoms.copy()
    atoms.calc = StudentCalculator(student, dtype="float64")
    stress = atoms.get_stress(voigt=False) if atoms.pbc.all() else None
    return atoms.get_potential_energy(), atoms.get_forces(), stress


@pytest.mark.parametrize(
    ("neighbor_format", "fractional"),
    [("sparse", False), ("dense", True), ("ordered_sparse", True)],
)
def test_step0_energy_forces_stress_equal_ase(tiny_student, neighbor_format, fractional):
    atoms = silicon(repeat=(2, 2, 2), rattle=0.05)  # 10.86 Å box > 2 x 4 Å cutoff
    energy, forces, stress = _ase_reference(atoms, tiny_student)
    box = jnp.asarray(atoms.cell.array.T)
    displacement_fn, _ = space.periodic_general(box, fractional_coordinates=fractional)
    neighbor_fn, energy_fn = jax_md_potential(
        tiny_student,
        displacement_fn,
        box,
        atoms.numbers,
        format=neighbor_format,
        fractional_coordinates=fractional,
    )
    R = jnp.asarray(atoms.get_scaled_positions() if fractional else atoms.positions)
    nbrs = neighbor_fn.allocate(R)

    @jax.jit
    def evaluate(R, nbrs):
        return (
            energy_fn(R, nbrs),
            quantity.force(energy_fn)(R, neighbor=nbrs),
            quantity.stress(energy_fn, R, box, neighbor=nbrs),
            quantity.pressure(energy_fn, R, box, neighbor=nbrs),
        )

    jax_energy, jax_forces, jax_stress, jax_pressure = evaluate(R, nbrs)
    assert float(jax_energy) == pytest.approx(energy, abs=1e-10)
    np.testing.assert_allclose(jax_forces, forces, atol=1e-10)
    # jax-md's stress is minus ASE's (a compressed crystal has positive stress there)
    np.testing.assert_allclose(-np.asarray(jax_stress), stress, atol=1e-12)
    assert float(jax_pressure) == pytest.approx(-np.trace(stress) / 3, abs=1e-12)


def test_molecule_in_free_space_equals_ase(tiny_student):
    atoms = ethanol()
    energy, forces, _ = _ase_reference(atoms, tiny_student)
    displacement_fn, _ = space.free()
    neighbor_fn, energy_fn = jax_md_potential(tiny_student, displacement_fn, None, atoms.numbers)
    R = jnp.asarray(atoms.positions)
    nbrs = neighbor_fn.allocate(R)
    jax_energy, jax_forces = jax.jit(jax.value_and_grad(energy_fn))(R, nbrs)
    assert float(jax_energy) == pytest.approx(energy, abs=1e-10)
    np.testing.assert_allclose(-jax_forces, forces, atol=1e-10)


def test_box_too_small_raises_clear_error(tiny_student):
    atoms = silicon()  # 5.43 Å cube, cutoff 4 Å
    box = jnp.asarray(atoms.cell.array.T)
    displacement_fn, _ = space.periodic_general(box, fractional_coordinates=False)
    with pytest.raises(ValueError, match="too small for jax-md"):
        jax_md_potential(tiny_student, displacement_fn, box, atoms.numbers)
    with pytest.raises(ValueError, match="unknown to this student"):
        jax_md_potential(tiny_student, displacement_fn, box, [14] * 7 + [26])


def test_users_nose_hoover_script_runs_unchanged(tiny_student):
    """A plain jax-md NVT script with the student's energy_fn: thermostat works, the
    Nose-Hoover invariant is conserved, no overflow."""
    atoms = silicon(repeat=(2, 2, 2), rattle=0.05)
    box = jnp.asarray(atoms.cell.array.T)
    displacement_fn, shift_fn = space.periodic_general(box, fractional_coordinates=False)
    neighbor_fn, energy_fn = jax_md_potential(tiny_student, displacement_fn, box, atoms.numbers)
    R = jnp.asarray(atoms.positions)
    nbrs = neighbor_fn.allocate(R)
    kT = units.kB * 600.0
    init_fn, apply_fn = simulate.nvt_nose_hoover(
        energy_fn, shift_fn, 0.5 * units.fs, kT, tau=50 * units.fs
    )
    state = init_fn(jax.random.PRNGKey(0), R, mass=jnp.asarray(atoms.get_masses()), neighbor=nbrs)
    invariant_fn = jax.jit(
        lambda state, nbrs: simulate.nvt_nose_hoover_invariant(energy_fn, state, kT, neighbor=nbrs)
    )
    invariant0 = invariant_fn(state, nbrs)

    def body(i, carry):
        state, nbrs = carry
        nbrs = nbrs.update(state.position)
        return apply_fn(state, neighbor=nbrs), nbrs

    state, nbrs = jax.jit(lambda s, n: jax.lax.fori_loop(0, 200, body, (s, n)))(state, nbrs)
    assert not nbrs.did_buffer_overflow
    invariant = invariant_fn(state, nbrs)
    assert abs(float(invariant - invariant0)) / len(atoms) < 2e-4
    temperature = float(simulate.temperature(state)) / units.kB
    assert 100 < temperature < 2000
    # the final state's forces equal the ASE calculator's on the same configuration
    final = atoms.copy()
    final.positions = np.asarray(state.position)
    _, forces, _ = _ase_reference(final, tiny_student)
    np.testing.assert_allclose(np.asarray(state.force), forces, atol=1e-9)


def _short_nve(student, atoms, disable_cell_list: bool, steps: int = 40):
    side = float(atoms.cell[0, 0])  # a cube: jax-md's cell list wants a scalar or vector box
    displacement_fn, shift_fn = space.periodic(side)
    neighbor_fn, energy_fn = jax_md_potential(
        student, displacement_fn, side, atoms.numbers, disable_cell_list=disable_cell_list
    )
    R = jnp.asarray(atoms.get_positions(wrap=True))
    nbrs = neighbor_fn.allocate(R)
    assert (nbrs.cell_list_fn is None) == disable_cell_list
    init_fn, apply_fn = simulate.nve(energy_fn, shift_fn, 1.0 * units.fs)
    masses = jnp.asarray(atoms.get_masses())
    state = init_fn(jax.random.PRNGKey(1), R, units.kB * 900, mass=masses, neighbor=nbrs)

    def step(carry, _):
        state, nbrs = carry
        nbrs = nbrs.update(state.position)
        return (apply_fn(state, neighbor=nbrs), nbrs), energy_fn(state.position, nbrs)

    (state, nbrs), energies = jax.jit(lambda c: jax.lax.scan(step, c, None, length=steps))(
        (state, nbrs)
    )
    assert not nbrs.did_buffer_overflow
    assert np.all(np.isfinite(np.asarray(energies)))
    return np.asarray(state.position)


@pytest.mark.slow
def test_cell_list_and_no_cell_list_in_a_scan(tiny_student):
    """Both neighbour-search paths inside lax.scan give the same trajectory.

    The 216-atom cube (16.3 Å) holds 3 cells of cutoff + skin (4.5 Å) per side, so the
    cell list is really used when enabled.
    """
    atoms = silicon(repeat=(3, 3, 3), rattle=0.05)
    without = _short_nve(tiny_student, atoms, disable_cell_list=True)
    with_cells = _short_nve(tiny_student, atoms, disable_cell_list=False)
    np.testing.assert_allclose(with_cells, without, atol=1e-9)


def test_default_cell_list_choice_follows_jax_version():
    major_minor = tuple(int(p) for p in jax.__version__.split(".")[:2])
    assert default_disable_cell_list() == (major_minor >= (0, 11))
