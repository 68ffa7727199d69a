"""The jax-md engine of ``run_md`` as a factory of functions, in jax-md's style.

:func:`jaxmd_engine` builds, for one student, structure and set of MD settings, a
:class:`JaxMDEngine`: pure functions of pytrees (``init``, ``chunk``, ``observe``: a
chunk is ``n_samples`` samples of ``inner`` steps in one ``lax.scan`` over a
``lax.fori_loop``, with neighbour updates inside) plus the host-side neighbour-list
allocation they need. The host loop that compiles, runs and checks chunks is
``md/jaxmd_loop.py``.

A chunk's carry is ``(state, neighbours, reference_inverse_box, rebuilds,
kinetic_sum)``: the integrator state, the neighbour list, the inverse box at the last
rebuild (NPT strain), neighbour rebuilds so far and the kinetic energy summed over
the steps since the last sample.

Everything that touches jax-md is here and imported only when a jax-md run starts
(importing jax_md takes seconds).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import ase
import jax
import jax.numpy as jnp
import numpy as np
from ase import units

from jaxdistill.committee import Model, force_spread, is_committee
from jaxdistill.md import jaxmd


class JaxMDSettings(NamedTuple):
    """What decides an engine beyond the student and structure (hashable)."""

    ensemble: str
    thermostat: str
    timestep_fs: float
    friction_per_fs: float
    thermostat_time_fs: float
    pressure_bar: float
    barostat_time_fs: float
    skin: float
    neighbor_format: str
    neighbor_rebuild: str
    disable_cell_list: bool | None
    capacity_multiplier: float
    compact_rows: bool | str
    batched: bool


class JaxMDEngine(NamedTuple):
    """One run's functions. ``init``, ``observe`` and ``chunk`` are pure (jit them;
    vmapped over replicas when ``batched``); ``allocate`` and ``reallocate`` run on the
    host between chunks.

    Attributes:
        init: ``(keys, positions, momenta, nbrs, kTs, boxes, masses, params) -> state``.
        observe: ``(carry, kT, params) -> dict`` of one sample's observables (with a
            committee also ``force_std`` ``[n_atoms]`` and ``max_force_std``, eV/Å).
        chunk: ``(carry, kT, params, n_samples, inner, width=None) -> (carry,
            samples)``; ``width`` (replicas) runs the student on rows compacted to that
            many slots (the full list when it is at least the list's), and the
            samples' ``compaction_peak`` (the most pairs within the cutoff any atom had
            since the last sample) says whether every step fit.
        allocate: ``(positions, boxes, minimum_capacity=0) -> nbrs`` (grown until no
            replica overflows).
        reallocate: ``(start_carry, failed_carry) -> carry``: the chunk's start carry
            with a larger list, after the chunk overflowed.
        boxes_of: ``state -> boxes`` (current NPT boxes, the fixed box, or None).
        largest_pairs: ``carry -> int``: the most pairs within the cutoff any atom of
            any replica has now, or None when the replicas do not compact.
        box: the fixed box (columns are lattice vectors), or None for a molecule.
        cutoff: the student's cutoff, Å.
        conserved: whether the ensemble conserves an energy (all but Langevin).
        overflow_bits: neighbour-list error bits that mean "redo with a larger list".
        dtype: the student's floating dtype.
        committee: whether the model is a student committee.
    """

    init: Callable
    observe: Callable
    chunk: Callable
    allocate: Callable
    reallocate: Callable
    boxes_of: Callable
    largest_pairs: Callable
    box: Any
    cutoff: float
    conserved: bool
    overflow_bits: int
    dtype: Any
    committee: bool = False


def inverse3(m: jax.Array) -> jax.Array:
    """Inverse of a 3x3 matrix by cofactors (no LAPACK call inside the MD loop)."""
    c00 = m[1, 1] * m[2, 2] - m[1, 2] * m[2, 1]
    c01 = m[1, 2] * m[2, 0] - m[1, 0] * m[2, 2]
    c02 = m[1, 0] * m[2, 1] - m[1, 1] * m[2, 0]
    c10 = m[0, 2] * m[2, 1] - m[0, 1] * m[2, 2]
    c11 = m[0, 0] * m[2, 2] - m[0, 2] * m[2, 0]
    c12 = m[0, 1] * m[2, 0] - m[0, 0] * m[2, 1]
    c20 = m[0, 1] * m[1, 2] - m[0, 2] * m[1, 1]
    c21 = m[0, 2] * m[1, 0] - m[0, 0] * m[1, 2]
    c22 = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
    det = m[0, 0] * c00 + m[0, 1] * c01 + m[0, 2] * c02
    adjugate = jnp.array([[c00, c10, c20], [c01, c11, c21], [c02, c12, c22]])
    return adjugate / det


def _integrator(simulate, energy_fn, shift, settings: JaxMDSettings):
    """jax-md's (init_fn, apply_fn) for the ensemble; kT is passed at every call."""
    dt = settings.timestep_fs * units.fs
    kT0 = units.kB * 300.0  # a placeholder: every call passes the replica's kT
    thermostat = {"tau": settings.thermostat_time_fs * units.fs}
    if settings.ensemble == "nve":
        return simulate.nve(energy_fn, shift, dt)
    if settings.ensemble == "nvt" and settings.thermostat == "langevin":
        return simulate.nvt_langevin(
            energy_fn, shift, dt, kT0, gamma=settings.friction_per_fs / units.fs
        )
    if settings.ensemble == "nvt":
        return simulate.nvt_nose_hoover(energy_fn, shift, dt, kT0, **thermostat)
    return simulate.npt_nose_hoover(
        energy_fn,
        shift,
        dt,
        settings.pressure_bar * units.bar,
        kT0,
        barostat_kwargs={"tau": settings.barostat_time_fs * units.fs},
        thermostat_kwargs=thermostat,
    )


def jaxmd_engine(student: Model, reference: ase.Atoms, settings: JaxMDSettings) -> JaxMDEngine:
    """The functions of a jax-md run of ``student`` on structures like ``reference``
    (same atoms; for a periodic cell, the same box in ASE's standard form).

    With a :class:`~jaxdistill.committee.StudentCommittee`, the dynamics follow the
    members' mean forces (``params`` are then the stacked members'), and each sample
    also holds ``force_std`` (per atom) and ``max_force_std`` (eV/Å).

    Raises:
        ValueError: an unknown ``neighbor_rebuild``, or a periodic box narrower than
            twice the cutoff (plus skin) that jax-md's minimum image needs.
    """
    from jax_md import partition, quantity, simulate, space

    ensemble, batched, skin = settings.ensemble, settings.batched, settings.skin
    n_atoms = len(reference)
    cutoff = float(student.cutoff)
    dtype = jnp.dtype(student.dtype)
    periodic = bool(np.all(reference.pbc))
    neighbor_format = jaxmd.resolve_format(settings.neighbor_format)
    if settings.neighbor_rebuild not in ("skin", "always"):
        raise ValueError(
            f"neighbor_rebuild must be 'skin' or 'always', got {settings.neighbor_rebuild!r}"
        )
    rebuild_always = settings.neighbor_rebuild == "always"
    disable_cell_list = settings.disable_cell_list
    if periodic:
        box = jnp.asarray(reference.cell.array.T, dtype=dtype)
        jaxmd.check_box(np.asarray(box), cutoff, skin)
        displacement, shift = space.periodic_general(box, fractional_coordinates=True)
        box_for_list = box
        if disable_cell_list is None:
            disable_cell_list = jaxmd.default_disable_cell_list()
    else:
        box = None
        displacement, shift = space.free()
        box_for_list = 1.0
        disable_cell_list = True  # molecules: an O(N^2) search of a few atoms is cheap
    common = dict(
        capacity_multiplier=settings.capacity_multiplier,
        disable_cell_list=bool(disable_cell_list),
        fractional_coordinates=periodic,
        format=neighbor_format,
    )
    neighbor_fn = partition.neighbor_list(
        displacement, box_for_list, cutoff, dr_threshold=skin, **common
    )
    # The same list at cutoff + skin, rebuilt unconditionally: our own criterion (which
    # accounts for box strain) decides when to call it.
    rebuild_fn = partition.neighbor_list(
        displacement, box_for_list, cutoff + skin, dr_threshold=0.0, **common
    )
    compaction = (
        jaxmd.resolve_compaction(settings.compact_rows, n_atoms, skin, settings.capacity_multiplier)
        if neighbor_format is partition.Dense
        else None
    )
    # Replicas vmap the energy over positions, where the compaction's per-step
    # lax.switch would run every branch: their chunks take a width fixed on the host
    # instead (``width``, see RowCompaction), and init and samples the full list.
    replica_compaction, compaction = (compaction, None) if batched else (None, compaction)
    energy_fn = jaxmd.make_energy_fn(student, displacement, reference.numbers, compaction)
    committee = is_committee(student)
    # The MD integrates the committee's mean forces (energy_fn is the mean energy); the
    # members' own forces are computed at samples only (a forward and backward pass
    # of each member per sample, nothing per step).
    member_forces_fn = (
        jaxmd.make_member_forces_fn(student, displacement, reference.numbers) if committee else None
    )
    init_fn, apply_fn = _integrator(simulate, energy_fn, shift, settings)

    @functools.cache
    def apply_at_width(width: int | None):
        """The integrator step on rows compacted to ``width`` slots (None: the
        energy_fn above)."""
        if width is None or replica_compaction is None:
            return apply_fn
        fixed = replica_compaction._replace(width=width)
        fixed_energy = jaxmd.make_energy_fn(student, displacement, reference.numbers, fixed)
        return _integrator(simulate, fixed_energy, shift, settings)[1]

    pressure = settings.pressure_bar * units.bar
    conserved = not (ensemble == "nvt" and settings.thermostat == "langevin")
    codes = partition.PartitionErrorCode
    overflow_bits = int(
        codes.NEIGHBOR_LIST_OVERFLOW | codes.CELL_LIST_OVERFLOW | codes.CELL_SIZE_TOO_SMALL
    )

    def box_kwargs(state) -> dict:
        return {"box": simulate.npt_box(state)} if ensemble == "npt" else {}

    def step_kwargs(kT) -> dict:
        return {} if ensemble == "nve" else {"kT": kT}

    def init_one(key, position, momenta, nbrs, kT, box, masses, params):
        kwargs = dict(mass=masses, momenta=momenta, neighbor=nbrs, params=params)
        if ensemble == "nve":
            return init_fn(key, position, kT, **kwargs)
        if ensemble == "npt":
            return init_fn(key, position, box, kT=kT, **kwargs)
        return init_fn(key, position, kT=kT, **kwargs)

    def update_neighbors(position, nbrs, reference_inverse_box, box_kw):
        """Rebuild when an atom moved more than skin/2, counting box strain (NPT)."""
        if rebuild_always:
            new = rebuild_fn.update(position, nbrs, **box_kw)
            return new, reference_inverse_box, jnp.ones((), jnp.int32)
        moved = jax.vmap(functools.partial(displacement, **box_kw))(
            position, nbrs.reference_position
        )
        largest = jnp.sqrt(jnp.max(jnp.sum(moved**2, axis=-1)))
        if ensemble == "npt":
            deformation = box_kw["box"] @ reference_inverse_box
            strain = jnp.sqrt(jnp.sum((deformation - jnp.eye(3, dtype=deformation.dtype)) ** 2))
            # sigma_min(F) >= 1 - ||F - 1||_F: pairs outside the list shrank by at most
            # that factor (see ase_calculator's docstring for the argument).
            largest = largest + 0.5 * (cutoff + skin) * strain
        needed = largest > 0.5 * skin

        def rebuild(_):
            new = rebuild_fn.update(position, nbrs, **box_kw)
            inverse = inverse3(box_kw["box"]) if ensemble == "npt" else reference_inverse_box
            return new, inverse

        def keep(_):
            return nbrs, reference_inverse_box

        nbrs, reference_inverse_box = jax.lax.cond(needed, rebuild, keep, None)
        return nbrs, reference_inverse_box, needed.astype(jnp.int32)

    def observe_one(carry, kT, params) -> dict:
        """Observables of one replica (one forward and one backward pass)."""
        state, nbrs, _, rebuilds, kinetic_sum = carry
        position = state.position
        kinetic = quantity.kinetic_energy(momentum=state.momentum, mass=state.mass)
        out = {}
        box_kw = {}
        if periodic:
            current = simulate.npt_box(state) if ensemble == "npt" else box
            box_kw = {"box": current}
            volume = jnp.abs(jnp.linalg.det(current))

            def strained_energy(eps):
                return energy_fn(position, nbrs, box=current, perturbation=1.0 + eps, params=params)

            # Energy and virial together: P = (2 KE - dU/dε) / (3 V), as jax_md.quantity.pressure.
            energy, virial = jax.value_and_grad(strained_energy)(jnp.zeros((), position.dtype))
            out["pressure"] = (2.0 * kinetic - virial) / (3.0 * volume)
            out["volume"] = volume
            out["box"] = current
            out["positions"] = position @ current.T
        else:
            energy = energy_fn(position, nbrs, params=params)
            out["positions"] = position

        def known_energy(*_, **__):
            return energy

        if ensemble == "nve" or not conserved:
            conserved_energy = energy + kinetic
        elif ensemble == "nvt":
            conserved_energy = simulate.nvt_nose_hoover_invariant(known_energy, state, kT)
        else:
            conserved_energy = simulate.npt_nose_hoover_invariant(known_energy, state, pressure, kT)
        out.update(
            kT=2.0 * kinetic / (3 * n_atoms),
            potential_energy=energy,
            kinetic_energy=kinetic,
            conserved_energy=conserved_energy,
            momenta=state.momentum,
            forces=state.force,
            rebuilds=rebuilds,
            kinetic_sum=kinetic_sum,
            error=nbrs.error.code,
        )
        if committee:
            member_forces = member_forces_fn(position, nbrs, params=params, **box_kw)
            out["force_std"] = force_spread(member_forces)
            out["max_force_std"] = jnp.max(out["force_std"])
        return out

    def chunk_one(carry, kT, params, n_samples: int, inner: int, width: int | None = None):
        # a fixed compacted width: each step also finds the most pairs any atom had at
        # the positions its forces were taken at (the sample's "compaction_peak")
        checked = width is not None and width < carry[1].idx.shape[-1]
        step_apply = apply_at_width(width if checked else None)

        def one_step(_, c):
            state, nbrs, inverse_box, rebuilds, kinetic_sum, peak = c
            nbrs, inverse_box, rebuilt = update_neighbors(
                state.position, nbrs, inverse_box, box_kwargs(state)
            )
            state = step_apply(state, neighbor=nbrs, params=params, **step_kwargs(kT))
            kinetic = quantity.kinetic_energy(momentum=state.momentum, mass=state.mass)
            if checked:
                largest = jaxmd.largest_row(
                    state.position, nbrs, displacement, cutoff, **box_kwargs(state)
                )
                peak = jnp.maximum(peak, largest)
            return state, nbrs, inverse_box, rebuilds + rebuilt, kinetic_sum + kinetic, peak

        def sample(c, _):
            # The kinetic energy of every step between samples, summed from zero at each
            # sample (float32 sums of a few thousand terms): the mean temperature of a
            # small molecule from sparse samples alone is off by percents.
            c = (*c[:4], jnp.zeros_like(c[4]), jnp.zeros((), jnp.int32))
            *c, peak = jax.lax.fori_loop(0, inner, one_step, c)
            out = observe_one(tuple(c), kT, params)
            if checked:
                out["compaction_peak"] = peak
            return tuple(c), out

        return jax.lax.scan(sample, carry, None, length=n_samples)

    def boxes_of(state):
        """Current box(es) of a (batched) state, or the fixed box, or None."""
        if ensemble != "npt":
            if box is None:
                return None
            return jnp.broadcast_to(box, (*state.position.shape[:-2], 3, 3))
        return jax.vmap(simulate.npt_box)(state) if batched else simulate.npt_box(state)

    def allocate(positions, boxes, minimum_capacity: int = 0):
        """A neighbour list (batched for replicas) with at least ``minimum_capacity``.

        One list is allocated on the first replica and rebuilt for every replica with
        the same capacity; grown until no replica overflows.
        """
        sparse = partition.is_sparse(neighbor_format)
        first = positions[0] if batched else positions
        first_box = (boxes[0] if batched else boxes) if ensemble == "npt" else None
        kwargs = {"box": first_box} if first_box is not None else {}
        extra = 0
        for _ in range(30):
            template = neighbor_fn.allocate(first, extra_capacity=extra, **kwargs)
            if template.max_occupancy < minimum_capacity:
                missing = minimum_capacity - template.max_occupancy
                extra += math.ceil(missing / n_atoms) if sparse else missing
                template = neighbor_fn.allocate(first, extra_capacity=extra, **kwargs)
            template = jaxmd._hashable_cell_size(template)
            if not batched:
                nbrs = template
            elif ensemble == "npt":
                nbrs = jax.vmap(lambda r, b, t=template: rebuild_fn.update(r, t, box=b))(
                    positions, boxes
                )
            else:
                nbrs = jax.vmap(lambda r, t=template: rebuild_fn.update(r, t))(positions)
            if not np.any(np.asarray(nbrs.error.code) & overflow_bits):
                return nbrs
            minimum_capacity = max(minimum_capacity, template.max_occupancy) * 5 // 4 + 1
            extra = 0
        raise RuntimeError("could not allocate a neighbour list large enough")

    def reallocate(start_carry, failed_carry):
        """A larger list for a chunk's start state after the chunk overflowed.

        The capacity is at least 1.25 × the old one, and at least what the failed
        chunk's final positions need when they are finite (so one redo usually
        suffices even when the density changed a lot).
        """
        state, nbrs, inverse_box, rebuilds, kinetic_sum = start_carry
        capacity = nbrs.max_occupancy * 5 // 4 + 1
        end_state = failed_carry[0]
        if bool(jnp.all(jnp.isfinite(end_state.position))):
            probe = allocate(end_state.position, boxes_of(end_state))
            capacity = max(capacity, probe.max_occupancy)
        boxes = boxes_of(state)
        new_nbrs = allocate(state.position, boxes, capacity)
        if ensemble == "npt":
            inverse_box = jnp.linalg.inv(boxes)
        return state, new_nbrs, inverse_box, rebuilds, kinetic_sum

    if batched:
        init = jax.vmap(init_one, in_axes=(0, 0, 0, 0, 0, 0, None, None))
        observe = jax.vmap(observe_one, in_axes=(0, 0, None))

        def chunk(carry, kT, params, n_samples: int, inner: int, width: int | None = None):
            one = functools.partial(chunk_one, n_samples=n_samples, inner=inner, width=width)
            return jax.vmap(one, in_axes=(0, 0, None))(carry, kT, params)
    else:
        init, observe, chunk = init_one, observe_one, chunk_one

    def largest_pairs_one(carry):
        state, nbrs = carry[0], carry[1]
        return jaxmd.largest_row(state.position, nbrs, displacement, cutoff, **box_kwargs(state))

    counted = jax.jit(jax.vmap(largest_pairs_one) if batched else largest_pairs_one)

    def largest_pairs(carry) -> int | None:
        """The most pairs within the cutoff any atom of any replica has now (None when
        the replicas do not compact)."""
        if replica_compaction is None:
            return None
        return int(np.max(np.asarray(counted(carry))))

    return JaxMDEngine(
        init=init,
        observe=observe,
        chunk=chunk,
        allocate=allocate,
        reallocate=reallocate,
        boxes_of=boxes_of,
        largest_pairs=largest_pairs,
        box=box,
        cutoff=cutoff,
        conserved=conserved,
        overflow_bits=overflow_bits,
        dtype=dtype,
        committee=committee,
    )
