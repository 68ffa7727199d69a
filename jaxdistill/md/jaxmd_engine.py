"""The jax-md engine of ``run_md``: chunks of steps in one jitted ``lax.scan``.

Everything that touches jax-md is here and imported only when a jax-md run starts
(importing jax_md takes seconds).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from typing import Any

import ase
import jax
import jax.numpy as jnp
import numpy as np
from ase import units

from jaxdistill.diagnostics import count_compilations
from jaxdistill.md.jaxmd import _hashable_cell_size, box_widths, minimum_box_width
from jaxdistill.md.run import (
    BLOWUP_TEMPERATURE_FLOOR,
    EngineOptions,
    MDProgress,
    MDSummary,
    StopOnSignal,
    _FragmentCheck,
    _frame,
    _initial_momenta,
    _Progress,
    _raise_blowup,
    _standard_form,
    _summarise,
    _temperature_limits,
    _ThermoLog,
    _TrajectoryWriter,
)
from jaxdistill.student import Student

logger = logging.getLogger("jaxdistill.md")


def _inverse3(m: jax.Array) -> jax.Array:
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


def _schedule(steps: int, sample_every: int, chunk_steps: int) -> list[tuple[int, int]]:
    """Chunks as (samples, steps per sample); few distinct shapes, so few compilations."""
    per_chunk = max(1, chunk_steps // sample_every)
    full, remainder = divmod(steps, sample_every)
    chunks = []
    while full > 0:
        k = min(per_chunk, full)
        chunks.append((k, sample_every))
        full -= k
    if remainder:
        chunks.append((1, remainder))
    return chunks


class _JaxMDSystem:
    """Spaces, neighbour functions, integrator and the jitted chunk of one run."""

    def __init__(
        self,
        student: Student,
        reference: ase.Atoms,
        *,
        ensemble: str,
        thermostat: str,
        timestep_fs: float,
        friction_per_fs: float,
        thermostat_time_fs: float,
        pressure_bar: float,
        barostat_time_fs: float,
        skin: float,
        neighbor_format: str,
        neighbor_rebuild: str,
        disable_cell_list: bool | None,
        capacity_multiplier: float,
        batched: bool,
    ):
        from jax_md import partition, quantity, simulate, space

        from jaxdistill.md import jaxmd

        self.partition, self.quantity, self.simulate = partition, quantity, simulate
        self.ensemble, self.thermostat = ensemble, thermostat
        self.batched = batched
        self.n_atoms = len(reference)
        self.cutoff = float(student.cutoff)
        self.skin = skin
        self.dtype = jnp.dtype(student.dtype)
        self.periodic = bool(np.all(reference.pbc))
        self.format = jaxmd.resolve_format(neighbor_format)
        if neighbor_rebuild not in ("skin", "always"):
            raise ValueError(
                f"neighbor_rebuild must be 'skin' or 'always', got {neighbor_rebuild!r}"
            )
        self.rebuild_always = neighbor_rebuild == "always"
        if self.periodic:
            self.box = jnp.asarray(reference.cell.array.T, dtype=self.dtype)
            jaxmd.check_box(np.asarray(self.box), self.cutoff, skin)
            displacement, shift = space.periodic_general(self.box, fractional_coordinates=True)
            box_for_list = self.box
            if disable_cell_list is None:
                disable_cell_list = jaxmd.default_disable_cell_list()
        else:
            self.box = None
            displacement, shift = space.free()
            box_for_list = 1.0
            disable_cell_list = True  # molecules: an O(N^2) search of a few atoms is cheap
        self.disable_cell_list = bool(disable_cell_list)
        self.displacement = displacement
        common = dict(
            capacity_multiplier=capacity_multiplier,
            disable_cell_list=self.disable_cell_list,
            fractional_coordinates=self.periodic,
            format=self.format,
        )
        self.neighbor_fn = partition.neighbor_list(
            displacement, box_for_list, self.cutoff, dr_threshold=skin, **common
        )
        # The same list at cutoff + skin, rebuilt unconditionally: our own criterion
        # (which accounts for box strain) decides when to call it.
        self.rebuild_fn = partition.neighbor_list(
            displacement, box_for_list, self.cutoff + skin, dr_threshold=0.0, **common
        )
        self.energy_fn = jaxmd.make_energy_fn(student, displacement, reference.numbers)
        dt = timestep_fs * units.fs
        self.dt = dt
        self.pressure = pressure_bar * units.bar
        kT0 = units.kB * 300.0  # a placeholder: every call passes the replica's kT
        if ensemble == "nve":
            self.init_fn, self.apply_fn = simulate.nve(self.energy_fn, shift, dt)
        elif ensemble == "nvt" and thermostat == "langevin":
            self.init_fn, self.apply_fn = simulate.nvt_langevin(
                self.energy_fn, shift, dt, kT0, gamma=friction_per_fs / units.fs
            )
        elif ensemble == "nvt":
            self.init_fn, self.apply_fn = simulate.nvt_nose_hoover(
                self.energy_fn, shift, dt, kT0, tau=thermostat_time_fs * units.fs
            )
        else:
            self.init_fn, self.apply_fn = simulate.npt_nose_hoover(
                self.energy_fn,
                shift,
                dt,
                self.pressure,
                kT0,
                barostat_kwargs={"tau": barostat_time_fs * units.fs},
                thermostat_kwargs={"tau": thermostat_time_fs * units.fs},
            )
        self.conserved = not (ensemble == "nvt" and thermostat == "langevin")
        self._compiled: dict[tuple, Any] = {}
        observe = jax.vmap(self.observe, in_axes=(0, 0, None)) if batched else self.observe
        self.observe_jit = jax.jit(observe)
        init = jax.vmap(self.init, in_axes=(0, 0, 0, 0, 0, 0, None, None)) if batched else self.init
        self.init_jit = jax.jit(init)

    def init(self, key, position, momenta, nbrs, kT, box, masses, params):
        """The integrator's initial state for one replica."""
        if self.ensemble == "nve":
            return self.init_fn(
                key, position, kT, mass=masses, momenta=momenta, neighbor=nbrs, params=params
            )
        if self.ensemble == "npt":
            return self.init_fn(
                key,
                position,
                box,
                mass=masses,
                momenta=momenta,
                neighbor=nbrs,
                kT=kT,
                params=params,
            )
        return self.init_fn(
            key, position, mass=masses, momenta=momenta, neighbor=nbrs, kT=kT, params=params
        )

    # -- pieces used inside the jitted chunk ----------------------------------------

    def current_box(self, state):
        if self.ensemble == "npt":
            return self.simulate.npt_box(state)
        return self.box

    def _box_kwargs(self, state) -> dict:
        return {"box": self.simulate.npt_box(state)} if self.ensemble == "npt" else {}

    def update_neighbors(self, position, nbrs, reference_inverse_box, box_kwargs):
        """Rebuild when an atom moved more than skin/2, counting box strain (NPT)."""
        if self.rebuild_always:
            new = self.rebuild_fn.update(position, nbrs, **box_kwargs)
            return new, reference_inverse_box, jnp.ones((), jnp.int32)
        displacement = jax.vmap(functools.partial(self.displacement, **box_kwargs))
        moved = displacement(position, nbrs.reference_position)
        largest = jnp.sqrt(jnp.max(jnp.sum(moved**2, axis=-1)))
        if self.ensemble == "npt":
            deformation = box_kwargs["box"] @ reference_inverse_box
            strain = jnp.sqrt(jnp.sum((deformation - jnp.eye(3, dtype=deformation.dtype)) ** 2))
            # sigma_min(F) >= 1 - ||F - 1||_F: pairs outside the list shrank by at most
            # that factor (see ase_calculator's docstring for the argument).
            largest = largest + 0.5 * (self.cutoff + self.skin) * strain
        needed = largest > 0.5 * self.skin

        def rebuild(_):
            new = self.rebuild_fn.update(position, nbrs, **box_kwargs)
            inverse = (
                _inverse3(box_kwargs["box"]) if self.ensemble == "npt" else reference_inverse_box
            )
            return new, inverse

        def keep(_):
            return nbrs, reference_inverse_box

        nbrs, reference_inverse_box = jax.lax.cond(needed, rebuild, keep, None)
        return nbrs, reference_inverse_box, needed.astype(jnp.int32)

    def step_kwargs(self, kT) -> dict:
        return {} if self.ensemble == "nve" else {"kT": kT}

    def observe(self, carry, kT, params) -> dict:
        """Observables of one replica (one forward and one backward pass)."""
        state, nbrs, _, rebuilds, kinetic_sum = carry
        quantity = self.quantity
        position = state.position
        kinetic = quantity.kinetic_energy(momentum=state.momentum, mass=state.mass)
        out = {}
        if self.periodic:
            box = self.current_box(state)
            volume = jnp.abs(jnp.linalg.det(box))

            def strained_energy(eps):
                return self.energy_fn(
                    position, nbrs, box=box, perturbation=1.0 + eps, params=params
                )

            # Energy and virial together: P = (2 KE - dU/dε) / (3 V), as jax_md.quantity.pressure.
            energy, virial = jax.value_and_grad(strained_energy)(jnp.zeros((), position.dtype))
            out["pressure"] = (2.0 * kinetic - virial) / (3.0 * volume)
            out["volume"] = volume
            out["box"] = box
            out["positions"] = position @ box.T
        else:
            energy = self.energy_fn(position, nbrs, params=params)
            out["positions"] = position

        def known_energy(*_, **__):
            return energy

        if self.ensemble == "nve" or not self.conserved:
            conserved = energy + kinetic
        elif self.ensemble == "nvt":
            conserved = self.simulate.nvt_nose_hoover_invariant(known_energy, state, kT)
        else:
            conserved = self.simulate.npt_nose_hoover_invariant(
                known_energy, state, self.pressure, kT
            )
        out.update(
            kT=2.0 * kinetic / (3 * self.n_atoms),
            potential_energy=energy,
            kinetic_energy=kinetic,
            conserved_energy=conserved,
            momenta=state.momentum,
            forces=state.force,
            rebuilds=rebuilds,
            kinetic_sum=kinetic_sum,
            error=nbrs.error.code,
        )
        return out

    def chunk(self, carry, kT, params, n_samples: int, inner: int):
        def one_step(_, c):
            state, nbrs, inverse_box, rebuilds, kinetic_sum = c
            box_kwargs = self._box_kwargs(state)
            nbrs, inverse_box, rebuilt = self.update_neighbors(
                state.position, nbrs, inverse_box, box_kwargs
            )
            state = self.apply_fn(state, neighbor=nbrs, params=params, **self.step_kwargs(kT))
            kinetic = self.quantity.kinetic_energy(momentum=state.momentum, mass=state.mass)
            return state, nbrs, inverse_box, rebuilds + rebuilt, kinetic_sum + kinetic

        def sample(c, _):
            # The kinetic energy of every step between samples, summed from zero at each
            # sample (float32 sums of a few thousand terms): the mean temperature of a
            # small molecule from sparse samples alone is off by percents.
            c = (*c[:4], jnp.zeros_like(c[4]))
            c = jax.lax.fori_loop(0, inner, one_step, c)
            return c, self.observe(c, kT, params)

        return jax.lax.scan(sample, carry, None, length=n_samples)

    def compiled_chunk(self, carry, kT, params, n_samples: int, inner: int):
        """The chunk compiled for these shapes (cached; compile time kept apart)."""
        nbrs = carry[1]
        key = (n_samples, inner, nbrs.max_occupancy, nbrs.cell_list_capacity)
        if key not in self._compiled:
            function = functools.partial(self.chunk, n_samples=n_samples, inner=inner)
            if self.batched:
                function = jax.vmap(function, in_axes=(0, 0, None))
            self._compiled[key] = jax.jit(function).lower(carry, kT, params).compile()
        return self._compiled[key]

    # -- host side: allocation -------------------------------------------------------

    def allocate(self, positions, boxes, minimum_capacity: int = 0):
        """A neighbour list (batched for replicas) with at least ``minimum_capacity``.

        One list is allocated on the first replica and rebuilt for every replica with
        the same capacity; grown until no replica overflows.
        """
        partition = self.partition
        sparse = partition.is_sparse(self.format)
        first = positions[0] if self.batched else positions
        first_box = (boxes[0] if self.batched else boxes) if self.ensemble == "npt" else None
        kwargs = {"box": first_box} if first_box is not None else {}
        extra = 0
        for _ in range(30):
            template = self.neighbor_fn.allocate(first, extra_capacity=extra, **kwargs)
            if template.max_occupancy < minimum_capacity:
                missing = minimum_capacity - template.max_occupancy
                extra += math.ceil(missing / self.n_atoms) if sparse else missing
                template = self.neighbor_fn.allocate(first, extra_capacity=extra, **kwargs)
            template = _hashable(template)
            if not self.batched:
                nbrs = template
            elif self.ensemble == "npt":
                nbrs = jax.vmap(lambda r, b, t=template: self.rebuild_fn.update(r, t, box=b))(
                    positions, boxes
                )
            else:
                nbrs = jax.vmap(lambda r, t=template: self.rebuild_fn.update(r, t))(positions)
            codes = np.asarray(nbrs.error.code)
            if not np.any(codes & self.overflow_bits):
                return nbrs
            minimum_capacity = max(minimum_capacity, template.max_occupancy) * 5 // 4 + 1
            extra = 0
        raise RuntimeError("could not allocate a neighbour list large enough")

    def boxes_of(self, state):
        """Current box(es) of a (batched) state, or the fixed box, or None."""
        if self.ensemble != "npt":
            if self.box is None:
                return None
            return jnp.broadcast_to(self.box, (*state.position.shape[:-2], 3, 3))
        box_fn = self.simulate.npt_box
        return jax.vmap(box_fn)(state) if self.batched else box_fn(state)

    def reallocate(self, start_carry, failed_carry):
        """A larger list for a chunk's start state after the chunk overflowed.

        The capacity is at least 1.25 × the old one, and at least what the failed
        chunk's final positions need when they are finite (so one redo usually
        suffices even when the density changed a lot).
        """
        state, nbrs, inverse_box, rebuilds, kinetic_sum = start_carry
        capacity = nbrs.max_occupancy * 5 // 4 + 1
        end_state = failed_carry[0]
        if bool(jnp.all(jnp.isfinite(end_state.position))):
            probe = self.allocate(end_state.position, self.boxes_of(end_state))
            capacity = max(capacity, probe.max_occupancy)
        boxes = self.boxes_of(state)
        new_nbrs = self.allocate(state.position, boxes, capacity)
        if self.ensemble == "npt":
            inverse_box = jnp.linalg.inv(boxes)
        return state, new_nbrs, inverse_box, rebuilds, kinetic_sum

    @property
    def overflow_bits(self) -> int:
        codes = self.partition.PartitionErrorCode
        return int(
            codes.NEIGHBOR_LIST_OVERFLOW | codes.CELL_LIST_OVERFLOW | codes.CELL_SIZE_TOO_SMALL
        )


_SYSTEM_CACHE: dict[tuple, _JaxMDSystem] = {}
_SYSTEM_CACHE_SIZE = 8


def _cached_system(student: Student, reference: ase.Atoms, **options) -> _JaxMDSystem:
    """A system per (model, atoms, box, settings), so repeated runs reuse compilations.

    Parameters are arguments of the compiled chunk, not constants, so students of the
    same architecture and size (e.g. checkpoints of one training) share a system.
    """

    periodic = bool(np.all(reference.pbc))
    key = (
        student.architecture,
        json.dumps(student.hyperparameters, sort_keys=True),
        tuple(student.species),
        float(student.cutoff),
        student.dtype,
        tuple(int(z) for z in reference.numbers),
        reference.cell.array.tobytes() if periodic else None,
        tuple(sorted((k, str(v)) for k, v in options.items())),
    )
    system = _SYSTEM_CACHE.pop(key, None)
    if system is None:
        system = _JaxMDSystem(student, reference, **options)
    _SYSTEM_CACHE[key] = system  # most recently used last
    while len(_SYSTEM_CACHE) > _SYSTEM_CACHE_SIZE:
        _SYSTEM_CACHE.pop(next(iter(_SYSTEM_CACHE)))
    return system


def _hashable(nbrs):
    return _hashable_cell_size(nbrs)


def run_jaxmd(
    student: Student,
    structures: list[ase.Atoms],
    options: EngineOptions,
    *,
    neighbor_format,
    neighbor_rebuild,
    disable_cell_list,
    capacity_multiplier,
) -> MDSummary:
    start_wall = time.perf_counter()
    n_replicas = len(structures)
    batched = n_replicas > 1
    periodic = bool(np.all(structures[0].pbc))
    if periodic:
        structures = [_standard_form(s) for s in structures]
        cells = np.stack([s.cell.array for s in structures])
        if not np.allclose(cells, cells[0], rtol=0, atol=1e-9):
            raise ValueError("replicas must share one cell")
    reference = structures[0]
    system = _cached_system(
        student,
        reference,
        ensemble=options.ensemble,
        thermostat=options.thermostat,
        timestep_fs=options.timestep_fs,
        friction_per_fs=options.friction_per_fs,
        thermostat_time_fs=options.thermostat_time_fs,
        pressure_bar=options.pressure_bar,
        barostat_time_fs=options.barostat_time_fs,
        skin=options.skin,
        neighbor_format=neighbor_format,
        neighbor_rebuild=neighbor_rebuild,
        disable_cell_list=disable_cell_list,
        capacity_multiplier=capacity_multiplier,
        batched=batched,
    )
    params = student.params
    dtype = system.dtype
    n_atoms = len(reference)
    numbers = reference.numbers.copy()
    masses = jnp.asarray(reference.get_masses(), dtype=dtype)
    original_cell = reference.cell.array.copy()

    # Initial state, on the host then the device.
    if periodic:
        positions = np.stack([s.get_scaled_positions(wrap=True) for s in structures])
    else:
        positions = np.stack([s.positions for s in structures])
    momenta = np.stack(
        [
            _initial_momenta(s, float(t), options.seed + k, options.initial_velocities)
            for k, (s, t) in enumerate(zip(structures, options.temperatures, strict=True))
        ]
    )
    kTs = jnp.asarray(units.kB * options.temperatures, dtype=dtype)
    positions = jnp.asarray(positions, dtype=dtype)
    momenta = jnp.asarray(momenta, dtype=dtype)
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(n_replicas) + options.seed)
    box0 = system.box
    boxes = jnp.broadcast_to(box0, (n_replicas, 3, 3)) if periodic else None
    if not batched:
        positions, momenta, keys, kTs = positions[0], momenta[0], keys[0], kTs[0]
        boxes = box0

    nbrs = system.allocate(positions, boxes)
    init = system.init_jit
    state = init(keys, positions, momenta, nbrs, kTs, boxes, masses, params)
    if periodic:
        inverse_box = jnp.linalg.inv(boxes)
    else:
        inverse_box = jnp.zeros((n_replicas,) if batched else (), dtype)
    rebuilds0 = jnp.zeros((n_replicas,) if batched else (), jnp.int32)
    kinetic0 = jnp.zeros((n_replicas,) if batched else (), dtype)
    carry = (state, nbrs, inverse_box, rebuilds0, kinetic0)
    observe = system.observe_jit
    limits = _temperature_limits(options.temperatures, options.max_temperature_factor)
    writer = _TrajectoryWriter(options.trajectory, n_replicas)
    thermo = _ThermoLog(options.log_file)
    bar = _Progress(
        options.progress, options.steps, options.callback, f"{options.ensemble.upper()} (jax-md)"
    )
    reallocations = redone = 0
    compile_seconds = timed_seconds = 0.0
    timed_steps = 0
    chunk_us: list[float] = []
    kinetic_total = np.zeros(n_replicas)  # eV, summed over every step, float64
    # Isotropic NPT keeps the box's shape, so the width it needs is fixed.
    min_width = _minimum_width(box0, system.cutoff, options.skin) if periodic else 0.0

    def host(tree):
        """One sample to the host, with a leading replica axis."""
        out = jax.device_get(tree)
        if not batched:
            out = jax.tree_util.tree_map(lambda x: np.asarray(x)[None], out)
        return out

    def host_samples(tree):
        """A chunk's samples to the host as ``[n_samples, n_replicas, ...]``."""
        out = jax.device_get(tree)
        if batched:
            return jax.tree_util.tree_map(lambda x: np.swapaxes(np.asarray(x), 0, 1), out)
        return jax.tree_util.tree_map(lambda x: np.asarray(x)[:, None], out)

    def frames_of(sample: dict, index: int | None, step: int) -> list[ase.Atoms]:
        """ase.Atoms for every replica at one sample (index into a chunk, or None)."""
        pick = (lambda x: x[index]) if index is not None else (lambda x: x)
        frames = []
        for k in range(n_replicas):
            cell = pick(sample["box"])[k].T if periodic else original_cell
            frames.append(
                _frame(
                    numbers,
                    pick(sample["positions"])[k],
                    pick(sample["momenta"])[k],
                    cell,
                    np.array([periodic] * 3),
                    pick(sample["potential_energy"])[k],
                    pick(sample["forces"])[k],
                    step,
                    step * options.timestep_fs,
                    pick(sample["kT"])[k] / units.kB,
                )
            )
        return frames

    def thermo_values(sample: dict, index: int | None) -> dict[str, np.ndarray]:
        pick = (lambda x: x[index]) if index is not None else (lambda x: x)
        nan = np.full(n_replicas, np.nan)
        return {
            "temperature_kelvin": pick(sample["kT"]) / units.kB,
            "potential_energy": pick(sample["potential_energy"]),
            "kinetic_energy": pick(sample["kinetic_energy"]),
            "conserved_energy": pick(sample["conserved_energy"]),
            "pressure_bar": pick(sample["pressure"]) / units.bar if periodic else nan,
            "volume": pick(sample["volume"]) if periodic else nan,
        }

    def problems(values: dict, sample: dict, index: int) -> tuple[str | None, list[int]]:
        positions_ok = np.all(np.isfinite(sample["positions"][index]), axis=(-1, -2))
        finite = positions_ok & np.isfinite(values["potential_energy"])
        finite &= np.isfinite(values["temperature_kelvin"])
        if not np.all(finite):
            return "non-finite positions or energy", np.where(~finite)[0].tolist()
        hot = values["temperature_kelvin"] > limits
        if np.any(hot):
            k = int(np.where(hot)[0][0])
            return (
                f"temperature {values['temperature_kelvin'][k]:.4g} K exceeds {limits[k]:.4g} K "
                f"({options.max_temperature_factor:g} x max(target, "
                f"{BLOWUP_TEMPERATURE_FLOOR:g} K))",
                np.where(hot)[0].tolist(),
            )
        if options.ensemble == "npt":
            widths = np.array([np.min(_box_widths_np(b)) for b in sample["box"][index]])
            small = widths <= min_width
            if np.any(small):
                return (
                    f"the NPT box shrank to a width of {np.min(widths):.3f} Å, below the "
                    f"{min_width:.3f} Å that jax-md's minimum image needs with this cutoff",
                    np.where(small)[0].tolist(),
                )
        return None, []

    try:
        with count_compilations() as compiled:
            t0 = time.perf_counter()
            first = host(observe(carry, kTs, params))
            compile_seconds += time.perf_counter() - t0
            values = thermo_values(first, None)
            last_good = frames_of(first, None, 0)
            reason, bad = problems(values, {k: v[None] for k, v in first.items()}, 0)
            if reason is not None:
                raise ValueError(f"the starting structure is already unstable: {reason}")
            fragments = _FragmentCheck(options.bond_factor, last_good)
            thermo.add(0, 0.0, values)
            for k in range(n_replicas):
                writer.write(k, [last_good[k]])
            step = 0
            rebuild_total = 0
            with StopOnSignal(options.keep_on_interrupt) as stop:
                for n_samples, inner in _schedule(
                    options.steps, options.sample_every, options.chunk_steps
                ):
                    for _attempt in range(20):
                        t0 = time.perf_counter()
                        run = system.compiled_chunk(carry, kTs, params, n_samples, inner)
                        compile_seconds += time.perf_counter() - t0
                        t0 = time.perf_counter()
                        new_carry, samples = run(carry, kTs, params)
                        samples = host_samples(samples)
                        elapsed = time.perf_counter() - t0
                        overflowed = np.any(samples["error"] & system.overflow_bits, axis=1)
                        if not np.any(overflowed):
                            break
                        # Overflow in this chunk: samples from the first overflowed one on are
                        # not trusted. A blow-up before it is real; otherwise grow the list
                        # (rebuilt at the chunk's start) and redo the chunk from there.
                        first_bad = int(np.argmax(overflowed))
                        for i in range(first_bad):
                            reason, bad = problems(thermo_values(samples, i), samples, i)
                            if reason is not None:
                                _raise_blowup(
                                    reason,
                                    step + (i + 1) * inner,
                                    last_good,
                                    bad,
                                    options.last_good_path,
                                )
                        redone += 1
                        reallocations += 1
                        carry = system.reallocate(carry, new_carry)
                        logger.info(
                            "neighbour list overflow after step %d: reallocated with capacity %d, "
                            "redoing the chunk",
                            step,
                            carry[1].max_occupancy,
                        )
                    else:
                        raise RuntimeError("neighbour list kept overflowing; giving up")
                    timed_seconds += elapsed
                    timed_steps += n_samples * inner
                    chunk_us.append(1e6 * elapsed / (n_samples * inner))
                    # Check every sample in order; stop at the first bad one.
                    chunk_start = step
                    for i in range(n_samples):
                        sample_step = chunk_start + (i + 1) * inner
                        values = thermo_values(samples, i)
                        reason, bad = problems(values, samples, i)
                        if reason is not None:
                            _raise_blowup(
                                reason, sample_step, last_good, bad, options.last_good_path
                            )
                        frames = frames_of(samples, i, sample_step)
                        reason, bad = fragments(frames)
                        if reason is not None:
                            _raise_blowup(
                                reason, sample_step, last_good, bad, options.last_good_path
                            )
                        thermo.add(sample_step, sample_step * options.timestep_fs, values)
                        kinetic_total += samples["kinetic_sum"][i].astype(np.float64)
                        for k in range(n_replicas):
                            writer.write(k, [frames[k]])
                        last_good = frames
                        step = sample_step  # checked and written up to here
                    carry = new_carry
                    rebuild_total = int(np.sum(samples["rebuilds"][-1]))
                    temperature_now = float(np.mean(values["temperature_kelvin"]))
                    us = 1e6 * timed_seconds / timed_steps if timed_steps else None
                    logger.info(
                        "step %d T=%.1f K E_pot=%.6f eV",
                        step,
                        temperature_now,
                        float(np.mean(values["potential_energy"])),
                    )
                    bar.update(
                        MDProgress(
                            step,
                            options.steps,
                            temperature_now,
                            float(np.mean(values["potential_energy"])),
                            us,
                        )
                    )
                    if stop.requested:
                        break
            compilations = compiled.count
    finally:
        writer.close()
        thermo.close()
        bar.close()
    return _summarise(
        "jax-md",
        options,
        conserved=system.conserved,
        periodic=periodic,
        n_atoms=n_atoms,
        n_replicas=n_replicas,
        wall=time.perf_counter() - start_wall,
        compile_seconds=compile_seconds,
        timed_seconds=timed_seconds,
        timed_steps=timed_steps,
        thermo=thermo,
        rebuilds=rebuild_total,
        reallocations=reallocations,
        redone=redone,
        compilations=compilations,
        trajectory=writer.paths,
        atoms=last_good if batched else last_good[0],
        chunk_us=chunk_us,
        steps_done=step,
        step_mean_temperature=(
            float(np.mean(2.0 * kinetic_total / (3 * n_atoms * units.kB * step))) if step else None
        ),
    )


def _box_widths_np(box: np.ndarray) -> np.ndarray:
    return box_widths(box)


def _minimum_width(box, cutoff: float, skin: float) -> float:
    return minimum_box_width(np.asarray(box), cutoff, skin)
