"""Students on a jax-md Dense list run the receiver-major layout: same energies, forces
and stress as on a Sparse list, and no scatter-add left in the force program."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from structures import ethanol, silicon

from jaxdistill import create_student
from jaxdistill.md import jaxmd
from jaxdistill.md.jaxmd import jax_md_potential, receiver_major_edges
from jaxdistill.models import edges

jax_md = pytest.importorskip("jax_md")
from jax_md import partition, quantity, space  # noqa: E402

STUDENTS = {
    "painn": {"features": 8, "num_layers": 2, "num_radial": 6},
    "painn+zbl": {"features": 8, "num_layers": 2, "num_radial": 6, "repulsion": "zbl"},
    "schnet": {"features": 8, "num_layers": 2, "num_radial": 6},
}


def _student(name: str, dtype: str):
    architecture = name.split("+")[0]
    return create_student(
        architecture, ["H", "C", "O", "Si"], cutoff=4.0, seed=5, dtype=dtype, **STUDENTS[name]
    )


def _evaluate(student, atoms, neighbor_format: str, periodic: bool, **options):
    """Energy, forces and (periodic) jax-md stress through a user's jax-md set-up
    (``options``: more arguments of ``jax_md_potential``)."""
    if periodic:
        box = jnp.asarray(atoms.cell.array.T)
        displacement_fn, _ = space.periodic_general(box, fractional_coordinates=True)
        R = jnp.asarray(atoms.get_scaled_positions())
        fractional = True
    else:
        box, fractional = None, False
        displacement_fn, _ = space.free()
        R = jnp.asarray(atoms.positions)
    neighbor_fn, energy_fn = jax_md_potential(
        student,
        displacement_fn,
        box,
        atoms.numbers,
        format=neighbor_format,
        fractional_coordinates=fractional,
        **options,
    )
    nbrs = neighbor_fn.allocate(R)

    @jax.jit
    def evaluate(R, nbrs):
        energy = energy_fn(R, nbrs)
        forces = quantity.force(energy_fn)(R, neighbor=nbrs)
        stress = quantity.stress(energy_fn, R, box, neighbor=nbrs) if periodic else None
        return energy, forces, stress

    return evaluate(R, nbrs)


@pytest.mark.parametrize("name", sorted(STUDENTS))
@pytest.mark.parametrize(("dtype", "rtol"), [("float64", 1e-10), ("float32", 1e-5)])
def test_dense_equals_sparse_on_a_crystal(name, dtype, rtol):
    student = _student(name, dtype)
    atoms = silicon(repeat=(2, 2, 2), rattle=0.1, seed=4)
    e_sparse, f_sparse, s_sparse = _evaluate(student, atoms, "sparse", periodic=True)
    e_dense, f_dense, s_dense = _evaluate(student, atoms, "dense", periodic=True)
    assert float(e_dense) == pytest.approx(float(e_sparse), rel=rtol)
    scale = float(jnp.max(jnp.abs(f_sparse)))
    assert scale > 0
    np.testing.assert_allclose(f_dense, f_sparse, rtol=0, atol=rtol * scale * 10)
    stress_scale = float(jnp.max(jnp.abs(s_sparse)))
    np.testing.assert_allclose(s_dense, s_sparse, rtol=0, atol=rtol * stress_scale * 10)


@pytest.mark.parametrize("compact_rows", [False, True])
def test_symmetric_transpose_on_jax_md_lists_equals_sparse(compact_rows, monkeypatch):
    """Neighbour sums transposed by the list's symmetry (JAXDISTILL_PAIR_SYMMETRY=on) on
    jax-md's periodic_general Dense lists, as allocated and compacted to the cutoff: an
    edge and its reverse come from two displacement calls, equal to rounding. (SchNet's
    sums are PaiNN's scalar ones: tests/models/test_pair_symmetry.py.)"""
    monkeypatch.setenv(edges.PAIR_SYMMETRY_ENV_VAR, "on")
    student = _student("painn+zbl", "float64")
    atoms = silicon(repeat=(2, 2, 2), rattle=0.1, seed=4)
    e_sparse, f_sparse, s_sparse = _evaluate(student, atoms, "sparse", periodic=True)
    e_dense, f_dense, s_dense = _evaluate(
        student, atoms, "dense", periodic=True, compact_rows=compact_rows
    )
    assert float(e_dense) == pytest.approx(float(e_sparse), rel=1e-12)
    for got, want in ((f_dense, f_sparse), (s_dense, s_sparse)):
        scale = float(jnp.max(jnp.abs(want)))
        assert scale > 0
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 * scale)


def test_dense_equals_sparse_for_a_molecule():
    student = _student("painn+zbl", "float64")
    atoms = ethanol(seed=2)
    e_sparse, f_sparse, _ = _evaluate(student, atoms, "sparse", periodic=False)
    e_dense, f_dense, _ = _evaluate(student, atoms, "dense", periodic=False)
    assert float(e_dense) == pytest.approx(float(e_sparse), rel=1e-12)
    np.testing.assert_allclose(f_dense, f_sparse, rtol=0, atol=1e-10)


def _force_program(student, atoms, neighbor_format: str) -> str:
    box = jnp.asarray(np.diag(atoms.cell.array))
    displacement_fn, _ = space.periodic(box)
    neighbor_fn, energy_fn = jax_md_potential(
        student, displacement_fn, box, atoms.numbers, format=neighbor_format
    )
    R = jnp.asarray(atoms.positions)
    nbrs = neighbor_fn.allocate(R)
    return jax.jit(jax.grad(energy_fn)).lower(R, nbrs).compile().as_text()


@pytest.mark.parametrize("name", ["painn+zbl", "schnet"])
def test_dense_force_program_has_no_scatter(name):
    """The point of the layout: every scatter-add (segment sums and the transposes of
    gathers, the force accumulation included) became a gather or a sum over slots."""
    student = _student(name, "float32")
    atoms = silicon(repeat=(2, 2, 2), rattle=0.05)
    sparse = _force_program(student, atoms, "sparse")
    dense = _force_program(student, atoms, "dense")
    assert sparse.count(" scatter(") >= 4  # the count below can tell the difference
    assert dense.count(" scatter(") == 0


def test_unique_pairs_layout_equals_the_general_one():
    atoms = silicon(repeat=(2, 2, 2), rattle=0.1, seed=1)
    box = jnp.asarray(np.diag(atoms.cell.array))
    displacement_fn, _ = space.periodic(box)
    neighbor_fn = partition.neighbor_list(
        displacement_fn, box, 4.5, format=partition.Dense, disable_cell_list=True
    )
    nbrs = neighbor_fn.allocate(jnp.asarray(atoms.positions))
    n_atoms = len(atoms)
    fast, mask = receiver_major_edges(nbrs, n_atoms)
    general = edges.receiver_major_layout(fast.senders, n_atoms + 1)
    real = np.asarray(mask)
    assert real.sum() > 0
    np.testing.assert_array_equal(np.asarray(fast.layout.reverse_mask)[real], True)
    np.testing.assert_array_equal(
        np.asarray(fast.layout.reverse)[real], np.asarray(general.reverse)[real]
    )
    # The reverse of the reverse is the edge itself.
    reverse = np.asarray(fast.layout.reverse)
    np.testing.assert_array_equal(reverse[reverse[real]], np.flatnonzero(real))
    # Padding slots have no reverse, so they add nothing to the senders' sums.
    assert not np.asarray(fast.layout.reverse_mask)[~real].any()


def test_vmapped_replicas_on_dense_lists_equal_single_runs():
    student = _student("painn", "float64")
    replicas = [silicon(repeat=(2, 2, 2), rattle=0.1, seed=s) for s in range(3)]
    box = jnp.asarray(np.diag(replicas[0].cell.array))
    displacement_fn, _ = space.periodic(box)
    lists = {}
    for neighbor_format in ("dense", "sparse"):
        lists[neighbor_format] = jax_md_potential(
            student, displacement_fn, box, replicas[0].numbers, format=neighbor_format
        )
    R = jnp.stack([jnp.asarray(a.positions) for a in replicas])
    neighbor_fn, energy_fn = lists["dense"]
    template = neighbor_fn.allocate(R[0], extra_capacity=4)
    nbrs = jax.vmap(lambda r: template.update(r))(R)
    energies, gradients = jax.jit(jax.vmap(jax.value_and_grad(energy_fn)))(R, nbrs)
    sparse_fn, sparse_energy = lists["sparse"]
    single = jax.jit(jax.value_and_grad(sparse_energy))
    sparse_template = sparse_fn.allocate(R[0], extra_capacity=64)
    for k in range(len(replicas)):
        energy, gradient = single(R[k], sparse_template.update(R[k]))
        assert float(energies[k]) == pytest.approx(float(energy), rel=1e-12)
        np.testing.assert_allclose(gradients[k], gradient, rtol=0, atol=1e-10)


def test_auto_format_is_dense_on_a_gpu_and_sparse_on_a_cpu(monkeypatch):
    monkeypatch.setattr(jaxmd.jax, "default_backend", lambda: "gpu")
    assert jaxmd.resolve_format("auto") is partition.Dense
    monkeypatch.setattr(jaxmd.jax, "default_backend", lambda: "cpu")
    assert jaxmd.resolve_format("auto") is partition.Sparse
    assert jaxmd.resolve_format("dense") is partition.Dense


def test_a_student_without_the_layout_argument_still_runs_on_a_dense_list(monkeypatch):
    """Architectures registered by users keep the plain edge list on any format."""
    from collections.abc import Sequence

    import flax.linen as nn

    from jaxdistill import models

    class PairStudent(nn.Module):
        species: Sequence[int]
        cutoff: float

        @nn.compact
        def __call__(self, numbers, edge_vectors, senders, receivers, node_mask, edge_mask):
            width = self.param("width", nn.initializers.ones, ())
            r2 = jnp.sum(edge_vectors**2, axis=-1)
            pair = jnp.where(edge_mask, jnp.exp(-r2 / width), 0.0)
            return jax.ops.segment_sum(pair, receivers, num_segments=numbers.shape[0])

    monkeypatch.setitem(models.ARCHITECTURES, "pair-test", PairStudent)
    student = create_student("pair-test", ["Si"], cutoff=4.0, dtype="float64")
    assert not edges.accepts_layout(student.model)
    assert edges.accepts_layout(_student("schnet", "float64").model)
    atoms = silicon(repeat=(2, 2, 2), rattle=0.1)
    e_sparse, f_sparse, _ = _evaluate(student, atoms, "sparse", periodic=True)
    e_dense, f_dense, _ = _evaluate(student, atoms, "dense", periodic=True)
    assert float(e_dense) == pytest.approx(float(e_sparse), rel=1e-12)
    np.testing.assert_allclose(f_dense, f_sparse, rtol=0, atol=1e-10)


def test_forward_mode_needs_the_sparse_format():
    """What docs/md.md promises: jax.jvp through a Dense-list energy raises (custom_vjp),
    through a Sparse one it works and agrees with finite differences of the forces."""
    student = _student("schnet", "float64")
    atoms = silicon(repeat=(2, 2, 2), rattle=0.1, seed=3)
    box = jnp.asarray(np.diag(atoms.cell.array))
    displacement_fn, _ = space.periodic(box)
    R = jnp.asarray(atoms.positions)
    direction = jnp.asarray(np.random.default_rng(0).normal(size=R.shape))
    products = {}
    for neighbor_format in ("dense", "sparse"):
        neighbor_fn, energy_fn = jax_md_potential(
            student, displacement_fn, box, atoms.numbers, format=neighbor_format
        )
        nbrs = neighbor_fn.allocate(R)
        grad = jax.jit(jax.grad(lambda r, nbrs=nbrs, energy_fn=energy_fn: energy_fn(r, nbrs)))
        if neighbor_format == "dense":
            with pytest.raises(TypeError, match="custom_vjp"):
                jax.jvp(grad, (R,), (direction,))
        else:
            products[neighbor_format] = jax.jvp(grad, (R,), (direction,))[1]
            step = 1e-5
            central = (grad(R + step * direction) - grad(R - step * direction)) / (2 * step)
            np.testing.assert_allclose(products["sparse"], central, rtol=1e-5, atol=1e-7)


def test_compact_rows_moves_kept_slots_to_the_front():
    table = jnp.array([[5, 1, 7, 2], [3, 3, 0, 6], [9, 9, 9, 9]], jnp.int32)
    keep = jnp.array([[0, 1, 1, 0], [1, 0, 1, 1], [0, 0, 0, 0]], bool)
    compacted, largest = edges.compact_rows(table, keep, 3, fill=9)
    np.testing.assert_array_equal(compacted, [[1, 7, 9], [3, 0, 6], [9, 9, 9]])
    assert int(largest) == 3  # row 1 keeps three
    narrow, largest = edges.compact_rows(table, keep, 2, fill=9)
    assert int(largest) == 3  # more than fit: the caller must not use `narrow`
    np.testing.assert_array_equal(narrow[0], [1, 7])


def test_row_compaction_widths_follow_the_list():
    compaction = jaxmd.RowCompaction(skin=0.5, capacity_multiplier=1.25)
    # 40 slots sized for 32 pairs within 5.5 Å: 24.04 expected within 5 Å, times the
    # margins 1.25 and 1.6.
    assert compaction.widths(40, 5.0) == (31, 39)
    assert compaction.widths(24, 5.0) == (19,)  # never as wide as the list (24)
    assert compaction.widths(8, 100.0) == ()
    assert jaxmd.resolve_compaction("auto", jaxmd.COMPACT_MIN_ATOMS, 0.5, 1.25) == compaction
    assert jaxmd.resolve_compaction("auto", jaxmd.COMPACT_MIN_ATOMS - 1, 0.5, 1.25) is None
    assert jaxmd.resolve_compaction(False, 10**6, 0.5, 1.25) is None
    with pytest.raises(ValueError, match="compact_rows"):
        jaxmd.resolve_compaction("yes", 10, 0.5, 1.25)


@pytest.mark.parametrize(("margins", "branch"), [((1.25,), 0), ((0.3, 1.25), 1), ((0.3,), 1)])
@pytest.mark.parametrize("name", ["painn+zbl", "schnet"])
def test_compacted_rows_give_the_full_lists_results(name, margins, branch):
    """Compacted rows drop only pairs beyond the cutoff, which carry nothing: the same
    energy, forces and stress on the narrowest width that holds every row, and on the
    full list when none does (margins (0.3,): branch 1 of 2 is the full list)."""
    student = _student(name, "float64")
    atoms = silicon(repeat=(2, 2, 2), rattle=0.1, seed=3)
    box = jnp.asarray(atoms.cell.array.T)
    displacement_fn, _ = space.periodic_general(box, fractional_coordinates=True)
    R = jnp.asarray(atoms.get_scaled_positions())
    neighbor_fn, full_fn = jax_md_potential(
        student,
        displacement_fn,
        box,
        atoms.numbers,
        fractional_coordinates=True,
        format="dense",
        compact_rows=False,
        capacity_multiplier=1.5,
    )
    compaction = jaxmd.RowCompaction(jaxmd.DEFAULT_DR_THRESHOLD, 1.5, margins)
    compact_fn = jaxmd.make_energy_fn(student, displacement_fn, atoms.numbers, compaction)
    nbrs = neighbor_fn.allocate(R)
    widths = compaction.widths(nbrs.idx.shape[1], 4.0)
    assert len(widths) == len(margins)
    displacement = jax.vmap(displacement_fn)
    padded = jnp.concatenate([R, jnp.zeros_like(R[:1])])
    table = jaxmd.receiver_major_table(nbrs, len(atoms))
    compacted, largest = jaxmd.compact_table(table, padded, displacement, 4.0, widths[-1])
    assert sum(int(largest) > w for w in widths) == branch  # the branch the energy takes
    vectors = jax.vmap(displacement)(
        padded[table], jnp.broadcast_to(padded[:, None], (*table.shape, 3))
    )
    within = (table < len(atoms)) & (jnp.linalg.norm(vectors, axis=-1) < 4.0)
    assert int(largest) == int(within.sum(axis=1).max())
    if int(largest) <= widths[-1]:
        np.testing.assert_array_equal((compacted < len(atoms)).sum(axis=1), within.sum(axis=1))

    def evaluate(energy_fn):
        return jax.jit(
            lambda R, nbrs: (
                energy_fn(R, nbrs),
                quantity.force(energy_fn)(R, neighbor=nbrs),
                quantity.stress(energy_fn, R, box, neighbor=nbrs),
            )
        )(R, nbrs)

    full = evaluate(full_fn)
    compact = evaluate(compact_fn)
    assert float(compact[0]) == pytest.approx(float(full[0]), rel=1e-12)
    for got, want in zip(compact[1:], full[1:], strict=True):
        scale = float(jnp.max(jnp.abs(want)))
        assert scale > 0
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 * scale)


@pytest.mark.parametrize("margins", [(1.25,), (0.3,)])
def test_compacted_rows_run_the_mode_for_compacted_rows(monkeypatch, margins):
    """Rows compacted to the cutoff evaluate the student with the message passing
    ``fused.mode_on_compacted_rows`` gives; the full list (the fallback branch, or no
    compaction) keeps the student's own. A mode that does not exist shows which ran:
    only the compacted rows raise."""
    monkeypatch.setattr(jaxmd, "mode_on_compacted_rows", lambda mode: "no-such-mode")
    student = _student("schnet", "float64")
    atoms = silicon(repeat=(2, 2, 2), rattle=0.1, seed=3)
    box = jnp.asarray(atoms.cell.array.T)
    displacement_fn, _ = space.periodic_general(box, fractional_coordinates=True)
    R = jnp.asarray(atoms.get_scaled_positions())
    neighbor_fn, full_fn = jax_md_potential(
        student, displacement_fn, box, atoms.numbers, fractional_coordinates=True,
        format="dense", compact_rows=False, capacity_multiplier=1.5,
    )  # fmt: skip
    nbrs = neighbor_fn.allocate(R)
    assert np.isfinite(float(full_fn(R, nbrs)))
    compaction = jaxmd.RowCompaction(jaxmd.DEFAULT_DR_THRESHOLD, 1.5, margins)
    compact_fn = jaxmd.make_energy_fn(student, displacement_fn, atoms.numbers, compaction)
    # every branch of the switch is traced, the compacted ones included
    with pytest.raises(ValueError, match="no-such-mode"):
        compact_fn(R, nbrs)
    # a width fixed on the host (replicas): compacted rows as well, unless not narrower
    narrow = jaxmd.RowCompaction(jaxmd.DEFAULT_DR_THRESHOLD, 1.5, margins, width=30)
    with pytest.raises(ValueError, match="no-such-mode"):
        jaxmd.make_energy_fn(student, displacement_fn, atoms.numbers, narrow)(R, nbrs)
    wide = jaxmd.RowCompaction(jaxmd.DEFAULT_DR_THRESHOLD, 1.5, margins, width=10**6)
    wide_fn = jaxmd.make_energy_fn(student, displacement_fn, atoms.numbers, wide)
    assert float(wide_fn(R, nbrs)) == pytest.approx(float(full_fn(R, nbrs)), rel=1e-12)
