"""A drop-in ASE Calculator for students.

An existing ASE script changes one line::

    atoms.calc = jaxdistill.StudentCalculator("runs/si/student")

Everything else (VelocityVerlet, Langevin, NPT integrators, optimisers, cell filters)
runs unchanged. Per call the calculator moves one array each way: positions and cell
packed into one buffer in, energy, forces (and stress) packed into one vector out, around
one jitted evaluation; on a GPU that program writes its vector to pinned host memory
itself (:data:`RESULT_MEMORY`), which halves the round trip. When ASE asks only for
energy and forces (as its integrators do) the strain derivative is skipped; stress is
computed when asked for, per-atom energies likewise. A student committee
(``jaxdistill.committee``) runs its members in one vmap of the same program and returns
their mean plus their disagreement in the same vector.

Device: ``device="auto"`` runs small structures on the CPU, where a call costs less
than the round trip to a GPU, and larger ones on the GPU (the crossover,
``AUTO_GPU_MIN_ATOMS``, is measured: docs/benchmarks.md); "cpu" and "gpu" force one.

Neighbour list: built for ``cutoff + skin`` and reused while it is provably complete.
An atom pair missing from the list was at least ``cutoff + skin`` apart when the
list was built; with the cell deformed by ``F`` (``cell = cell_ref @ F``) and every atom
displaced by at most ``d`` from its affinely deformed reference position
(``positions_ref @ F``), that pair is now at least ``σ_min(F) (cutoff + skin) - 2 d``
apart. The list is therefore kept while

    d + (cutoff + skin) (1 - σ_min(F)) / 2  <=  skin / 2

which reduces to the usual "no atom moved more than half the skin" for a fixed cell
and lets NPT dynamics and cell filters reuse the list across small strains. Any
change of atom count, elements or periodicity rebuilds it; a change of atom count
also re-pads to that system's size (node rows: a bucket below 512 atoms, exactly
``n_atoms + 1`` from there). Edge capacities only grow for a given system,
so an MD run compiles once (again only if the neighbour count outgrows a bucket).

Edge layout: on a GPU (``edge_layout="auto"``) the graph is receiver-major (every atom
owns a bucketed number of edge slots, ``jaxdistill.graph``), so the student's energy,
forces and stress have no scatter-add; on a CPU a plain edge list, which measured as
fast there (docs/benchmarks.md).
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import ase
import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from jaxdistill.committee import (
    StudentCommittee,
    as_model,
    force_spread,
    is_committee,
    over_members,
)
from jaxdistill.graph import (
    Graph,
    batch_graphs,
    bucket_capacity,
    neighbour_pairs,
    pair_vectors,
    slot_capacity,
    slots_for,
    validate_atoms,
)
from jaxdistill.models.fused import mode_on_compacted_rows
from jaxdistill.potential import Potential, compact_graph, voigt_stress
from jaxdistill.student import Student


class _Reference(NamedTuple):
    """The configuration a neighbour list was built for (host copies)."""

    positions: np.ndarray
    cell: np.ndarray
    inverse_cell: np.ndarray | None  # only for cells periodic in all directions
    pbc: np.ndarray
    numbers: np.ndarray


#: Structures with fewer atoms run on the CPU under ``device="auto"``: a GPU call's
#: fixed cost (the transfer round trip) outweighs its speed below this size. Measured
#: on one H100 and its 16-core host (2026-12-06, results in pinned host memory,
#: docs/benchmarks.md): 9-atom ethanol about even (painn 0.64 ms on the CPU vs
#: 0.34-0.54 on the GPU, schnet 0.26 vs 0.30-0.35), 21-atom hexanol 2.5-6x faster on
#: the GPU (painn 2.66 vs 0.37-0.43 ms, schnet 0.82 vs 0.33).
AUTO_GPU_MIN_ATOMS = 16
#: ``compact_rows="auto"`` compacts the graph to the pairs within the cutoff, per call,
#: from this many atoms, by the platform of the calculator's device
#: (:func:`jaxdistill.potential.compact_graph`). Measured 2026-12-07 with
#: benchmarks/calculator_ab.py --option compact_rows (then calculator_compact_ab.py;
#: paired rounds; docs/benchmarks.md): on an H100
#: it saved 0.03-0.12 ms a call (3-8 %) from 512 to 1000 atoms, PaiNN and SchNet, and
#: nothing either way at 64; on a 2-core CPU (edge list) 8-13 % from 64 Si atoms, while
#: at 21-atom hexanol (8 % fewer edges) PaiNN gained 2-4 % and SchNet lost 4-8 %.
COMPACT_MIN_ATOMS = {"cpu": 64, "gpu": 512}
#: How a call waits for its result, by platform, under ``host_wait="auto"``: "block"
#: (sleep until the runtime wakes the thread) or "spin" (poll ``is_ready()``, keeping
#: the core awake; never on a CPU backend, whose own threads compute the result).
#: Measured on one H100 and its 16-core host (2026-12-07, benchmarks/calculator_ab.py
#: --option host_wait, 400 paired rounds; docs/benchmarks.md): polling made every
#: case faster, 0.013-0.031 ms a forces call (paired medians; PaiNN and SchNet, Si 64
#: to 1000 atoms and water 648) and 0.02-0.07 ms a null round trip.
HOST_WAIT = {"cpu": "block", "gpu": "spin"}
#: Environment variable that overrides ``host_wait="auto"`` ("block" or "spin").
HOST_WAIT_ENV = "JAXDISTILL_HOST_WAIT"
HOST_WAITS = ("auto", "block", "spin")
#: A polling call gives up polling after this long (s) and blocks: a wake-up's tens of
#: µs matter to a 1 ms call, not to a long one, which need not hold a core (and
#: Python's lock) for its whole length.
SPIN_SECONDS = 0.005
DEVICES = ("auto", "cpu", "gpu")
EDGE_LAYOUTS = ("auto", "receiver_major", "edge_list")


def _unpack_input(graph: Graph, packed: jax.Array) -> Graph:
    """The graph with positions and the first cell taken from one packed buffer
    ``[n_node + 3, 3]`` (positions, then the cell's rows)."""
    n_node = graph.positions.shape[0]
    cell = jnp.zeros_like(graph.cell).at[0].set(packed[n_node:])
    return graph._replace(positions=packed[:n_node], cell=cell)


def _evaluate_program(
    potential: Potential,
    params,
    graph: Graph,
    packed: jax.Array,
    *,
    stress: bool,
    energies: bool,
    committee: bool,
    compact_width: int | None = None,
    cutoff: float = 0.0,
) -> jax.Array:
    """Everything one call returns, flat, for the first graph of ``graph``:

    ``[energy (1), forces (3 n_node), Voigt stress (6, with stress), per-atom energies
    (n_node, with energies), per-atom force std (n_node) and energy std (1), with
    committee, the compaction's ``largest`` (1, with compact_width)]``.

    Without ``stress`` the strain derivative is skipped. With ``committee``, ``params``
    are stacked members (leading axis K) evaluated by one vmap and the outputs are their
    means plus their spread (``jaxdistill.committee``). With ``compact_width`` the
    graph is first compacted to the pairs within ``cutoff``, that many slots per atom
    (receiver-major) or edges (edge list) (:func:`jaxdistill.potential.compact_graph`);
    the results are valid only where the last element is at most ``compact_width``.
    """
    graph = _unpack_input(graph, packed)
    largest = None
    if compact_width is not None:
        graph, largest = compact_graph(graph, cutoff, compact_width)

    def one(p) -> dict[str, jax.Array]:
        if stress:
            prediction = potential.predict(p, graph)
            out = {"energy": prediction.energy[:1], "forces": prediction.forces}
            out["stress"] = voigt_stress(prediction.stress[0])
        else:
            graph_energies, forces = potential.energy_and_forces(p, graph)
            out = {"energy": graph_energies[:1], "forces": forces}
        if energies:
            out["energies"] = potential.atomic_energies(p, graph)
        return out

    if committee:
        members = over_members(one, params)
        out = jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0), members)
        out["force_std"] = force_spread(members["forces"])
        out["energy_std"] = jnp.std(members["energy"][:, 0])[None]
    else:
        out = one(params)
    if largest is not None:
        out["largest"] = largest.astype(out["energy"].dtype)
    order = ("energy", "forces", "stress", "energies", "force_std", "energy_std", "largest")
    return jnp.concatenate([out[k].reshape(-1) for k in order if k in out])


_STATIC = ("potential", "stress", "energies", "committee", "compact_width", "cutoff")
# One jitted program for all calculators: the potential (static, hashed by identity) is
# cached per model description, so calculators sharing a student share compilations;
# each combination of flags is its own (compiled once) program.
_program = jax.jit(_evaluate_program, static_argnames=_STATIC)

#: Where a GPU call leaves its packed result. "pinned_host": the program writes it to
#: page-locked host memory itself, so reading it is a host copy. "device": it stays on
#: the GPU and ``np.asarray`` fetches it through JAX's device-to-host path, which cost
#: 130-160 µs for a few hundred bytes on an H100 (benchmarks/round_trip.py,
#: 2026-12-06): pinned results made a 64-atom Si call 130 µs faster (660 -> 530 µs)
#: and a 1000-atom one 176 µs (docs/benchmarks.md).
RESULT_MEMORY = "pinned_host"
#: Environment variable that overrides :data:`RESULT_MEMORY` ("device" or "pinned_host").
RESULT_MEMORY_ENV = "JAXDISTILL_RESULT_MEMORY"

#: Node and edge capacities of the calculator's graphs: 8 buckets per octave, so at most
#: an eighth is padding. A receiver-major graph has a full row of slots for every node
#: row, padding included: with 2 per octave, 512 atoms took 768 rows (a third of every
#: per-edge array was padding), now 576.
CAPACITY_PER_OCTAVE = 8
#: Head-room of an edge-list graph's edge capacity over the pairs counted at a build, so
#: the few percent a pair count drifts in MD does not cross a fine bucket (a compilation).
EDGE_HEADROOM = 1.05


#: From this many atoms a calculator's graph has exactly one padding node row (``n_atoms
#: + 1`` rows) instead of a bucket's: on an H100 (2026-12-07,
#: benchmarks/calculator_variants.py, paired rounds) the bucket sizes 1024 (Si 1000)
#: and 704 (water 648) were the slowest of eight row counts each, 0.06-0.10 ms a call
#: slower than n_atoms + 1 (docs/benchmarks.md). Below it, buckets let structures of
#: similar sizes share compilations.
EXACT_ROWS_MIN_ATOMS = 512


def node_capacity(n_atoms: int) -> int:
    """Node rows of the calculator's graph for ``n_atoms`` atoms (the last a padding node)."""
    if n_atoms >= EXACT_ROWS_MIN_ATOMS:
        return n_atoms + 1
    return bucket_capacity(n_atoms + 1, per_octave=CAPACITY_PER_OCTAVE)


def _edge_capacity(n_edges: int) -> int:
    """Edge capacity of the calculator's graph for ``n_edges`` pairs (one padding edge)."""
    return bucket_capacity(math.ceil(n_edges * EDGE_HEADROOM) + 1, per_octave=CAPACITY_PER_OCTAVE)


def _spins(host_wait: str, platform: str) -> bool:
    """Whether a calculator with ``host_wait`` polls for its results on ``platform``."""
    if host_wait == "auto":
        host_wait = os.environ.get(HOST_WAIT_ENV) or HOST_WAIT.get(platform, "block")
        if host_wait not in HOST_WAITS[1:]:
            raise ValueError(f"{HOST_WAIT_ENV} must be 'block' or 'spin', got {host_wait!r}")
    return host_wait == "spin" and platform != "cpu"


def fetch(result: jax.Array, spin: bool = False) -> np.ndarray:
    """A call's result as a float64 host vector. ``spin``: poll until it is ready
    (for at most :data:`SPIN_SECONDS`, then block) instead of sleeping in the runtime's
    wait, so no thread wake-up stands between the device finishing and the host
    reading."""
    is_ready = getattr(result, "is_ready", None)  # (a host array is ready)
    if spin and is_ready is not None:
        give_up = time.perf_counter() + SPIN_SECONDS
        while not is_ready() and time.perf_counter() < give_up:
            pass
    return np.asarray(result).astype(np.float64)


@functools.cache
def _program_for(device: jax.Device, result_memory: str):
    """The evaluation program for ``device`` whose result lands in ``result_memory``
    ("device" or "pinned_host"; the plain program on a CPU, or where the device offers
    no such memory)."""
    if result_memory not in ("device", "pinned_host"):
        raise ValueError(
            f"{RESULT_MEMORY_ENV} must be 'device' or 'pinned_host', got {result_memory!r}"
        )
    if result_memory == "device" or device.platform == "cpu":
        return _program
    try:
        kinds = {memory.kind for memory in device.addressable_memories()}
    except Exception:  # a backend without memory spaces
        kinds = set()
    if result_memory not in kinds:
        return _program
    sharding = jax.sharding.SingleDeviceSharding(device, memory_kind=result_memory)
    return jax.jit(_evaluate_program, static_argnames=_STATIC, out_shardings=sharding)


def _evaluate_jit(potential: Potential, params, graph: Graph, packed: jax.Array) -> jax.Array:
    """``[energy, forces (n_node x 3), Voigt stress (6)]`` of one student, flat."""
    return _program(potential, params, graph, packed, stress=True, energies=False, committee=False)


def _evaluate_forces_jit(
    potential: Potential, params, graph: Graph, packed: jax.Array
) -> jax.Array:
    """``[energy, forces (n_node x 3)]`` of one student, flat (no strain derivative)."""
    return _program(potential, params, graph, packed, stress=False, energies=False, committee=False)


#: model description -> the potential of the first student seen with it
_SHARED: dict[tuple, Potential] = {}


def _shared(model: Student | StudentCommittee, compacted: bool = False) -> Potential:
    """One potential per model description (architecture,
    hyper-parameters, species, cutoff, message passing), not per Student object: the
    compiled programs are keyed by them, so a reloaded, copied or unpickled student,
    a committee's members and a committee of one share compilations (parameters are
    arguments, and their dtype and shapes key the rest). ``compacted``: the potential
    for graphs compacted to the pairs within the cutoff, whose message passing follows
    :func:`jaxdistill.models.fused.mode_on_compacted_rows`."""
    mode = model.message_passing
    if compacted:
        mode = mode_on_compacted_rows(mode)
    key = (
        model.architecture,
        json.dumps(model.hyperparameters, sort_keys=True),
        tuple(model.species),
        float(model.cutoff),
        mode,
    )
    if key not in _SHARED:
        student = model.members[0] if is_committee(model) else model
        _SHARED[key] = student.with_message_passing(mode).potential
    return _SHARED[key]


def _gpu() -> jax.Device | None:
    try:
        return jax.devices("gpu")[0]
    except RuntimeError:
        return None


def resolve_device(device: str, n_atoms: int) -> jax.Device:
    """The JAX device a calculator uses for ``n_atoms`` atoms.

    Args:
        device: "auto" (the GPU from ``AUTO_GPU_MIN_ATOMS`` atoms on, if there is one),
            "cpu" or "gpu".
        n_atoms: the structure's size.

    Raises:
        ValueError: an unknown name, or "gpu" on a machine where JAX sees none.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    gpu = _gpu()
    if device == "gpu":
        if gpu is None:
            raise ValueError(
                "device='gpu' but JAX sees no GPU (jax.devices() lists "
                f"{[d.platform for d in jax.devices()]}); use device='cpu' or 'auto'"
            )
        return gpu
    if device == "auto" and gpu is not None and n_atoms >= AUTO_GPU_MIN_ATOMS:
        return gpu
    return jax.devices("cpu")[0]


def uses_receiver_major(edge_layout: str, platform: str) -> bool:
    """Whether a calculator lays its graph out receiver-major on a device of this
    platform ("auto": on GPUs, where it removes the scatter-adds; on a CPU the edge
    list measured as fast)."""
    if edge_layout not in EDGE_LAYOUTS:
        raise ValueError(f"edge_layout must be one of {EDGE_LAYOUTS}, got {edge_layout!r}")
    return edge_layout == "receiver_major" or (edge_layout == "auto" and platform == "gpu")


def strained_displacement(
    positions: np.ndarray,
    cell: np.ndarray,
    reference_positions: np.ndarray,
    reference_inverse_cell: np.ndarray,
) -> tuple[float, float]:
    """Non-affine displacement and strain shrink factor since a reference configuration.

    Args:
        positions, cell: the current configuration (rows are cell vectors).
        reference_positions, reference_inverse_cell: the configuration the neighbour
            list was built for (inverse of its cell).

    Returns:
        ``(d, shrink)``: the largest distance of an atom from its affinely deformed
        reference position, and ``max(0, 1 - σ_min(F))`` for the deformation
        ``F = cell_ref^-1 cell``, the largest relative shortening of any vector.
    """
    deformation = reference_inverse_cell @ cell
    affine = reference_positions @ deformation
    d = float(np.sqrt(np.max(np.sum((positions - affine) ** 2, axis=1))))
    sigma_min = float(np.linalg.svd(deformation, compute_uv=False)[-1])
    return d, max(0.0, 1.0 - sigma_min)


class StudentCalculator(Calculator):
    """ASE calculator of a jaxdistill student or a committee of students.

    Args:
        student: a :class:`~jaxdistill.Student`, the path of a saved one, a
            :class:`~jaxdistill.committee.StudentCommittee`, or a list of students or
            paths (made into a committee by :func:`~jaxdistill.committee.load_committee`).
        dtype: "float32" (default, fast) or "float64" (for energy-conservation checks;
            switches JAX to 64-bit mode).
        skin: extra neighbour-list radius in Å; larger means fewer rebuilds but more
            edges per call.
        device: "auto" (default: the CPU for structures under ``AUTO_GPU_MIN_ATOMS``
            atoms, else the GPU when JAX has one), "cpu" or "gpu".
        edge_layout: "auto" (default: "receiver_major" on a GPU, "edge_list" on a
            CPU), "receiver_major" (no scatter-add in the student's evaluation) or
            "edge_list". Same results either way, to float rounding.
        compact_rows: first compact the graph to the pairs within the cutoff, every
            call (each atom's slots on a receiver-major graph, the edge list as a
            whole otherwise), so the student runs on fewer edges than the list (built
            for ``cutoff + skin``, with head-room) holds: True, False or "auto"
            (default: from :data:`COMPACT_MIN_ATOMS` atoms, 64 on a CPU and 512 on a
            GPU). The compacted size is set at each neighbour-list build from the
            pairs then within the cutoff; a call with more is run again on a larger
            one (counted in ``compaction_overflows``), so results never depend on it.
        host_wait: how the host waits for a call's result: "block" (the thread sleeps
            until the runtime wakes it), "spin" (it polls the result, keeping its core
            busy for the length of the call, up to :data:`SPIN_SECONDS`) or "auto"
            (default: :data:`HOST_WAIT` by platform; the environment variable
            ``JAXDISTILL_HOST_WAIT`` overrides it).
            A call on a CPU always blocks (the backend's own threads compute it).
            Results are the same either way.

    Properties: energy and free_energy (eV), forces (eV/Å), stress (eV/Å³, Voigt order
    xx yy zz yz xz xy, only for cells periodic in all three directions), energies (the
    per-atom energies the model sums into the energy, eV ``[n_atoms]``; computed only
    when asked for: one extra forward pass). A committee's energy, forces, stress and
    energies are the means over its members, and every call also gives

    - ``force_std``: per-atom force disagreement ``sqrt(mean_k |F_k - <F>|^2)``, eV/Å,
      ``[n_atoms]``;
    - ``max_force_std``: its largest value, eV/Å (what MD thresholds);
    - ``force_disagreement``: its RMS over atoms, eV/Å (the ensemble teachers' number);
    - ``energy_std``: standard deviation of the members' energies, eV.

    All in the same single transfer each way (packed into the one result vector).

    The calculator pickles (and ``copy.deepcopy`` copies it) with its student's
    parameters on the host; the neighbour list, device arrays and compiled programs
    are rebuilt on the next call.

    Attributes:
        neighbour_list_builds: how many times the neighbour list was built.
        compaction_overflows: calls run again because there were more pairs within the
            cutoff than the compacted graph holds (each enlarges it for the calls
            after, one compilation).
        jax_device: the device of the current structure (None before the first call).
        committee: whether the model is a committee.
    """

    implemented_properties: ClassVar[list[str]] = [
        "energy",
        "free_energy",
        "forces",
        "stress",
        "energies",
    ]
    #: What a committee adds (every call).
    committee_properties: ClassVar[tuple[str, ...]] = (
        "force_std",
        "max_force_std",
        "force_disagreement",
        "energy_std",
    )

    def __init__(
        self,
        student: Student | StudentCommittee | str | Path | Sequence[Student | str | Path],
        dtype: str = "float32",
        skin: float = 0.5,
        device: str = "auto",
        edge_layout: str = "auto",
        compact_rows: bool | str = "auto",
        host_wait: str = "auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if skin < 0:
            raise ValueError(f"skin must be >= 0, got {skin}")
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        uses_receiver_major(edge_layout, "cpu")  # validates the name
        if compact_rows not in (True, False, "auto"):
            raise ValueError(f"compact_rows must be True, False or 'auto', got {compact_rows!r}")
        if host_wait not in HOST_WAITS:
            raise ValueError(f"host_wait must be one of {HOST_WAITS}, got {host_wait!r}")
        self.edge_layout = edge_layout
        self.compact_rows = compact_rows
        self.host_wait = host_wait
        self.student = as_model(student, dtype)
        self.committee = is_committee(self.student)
        if self.committee:
            # per instance: a plain student's calculator does not offer them
            self.implemented_properties = [
                *type(self).implemented_properties,
                *self.committee_properties,
            ]
        self.dtype = self.student.dtype
        self.skin = float(skin)
        self.device = device
        self.neighbour_list_builds = 0
        self.compaction_overflows = 0
        self._forget_device()

    def _forget_device(self) -> None:
        """Drop everything tied to a device or a compiled program (the next call
        rebuilds it): at construction and after unpickling."""
        self.jax_device: jax.Device | None = None
        self._params = None  # the parameters on jax_device
        self._graph: Graph | None = None  # on jax_device; positions and cell come per call
        self._reference: _Reference | None = None
        self._node_capacity = 0
        self._edge_capacity = 0
        self._slots = 0  # edge slots per atom of a receiver-major graph
        self._receiver_major = False  # the graph's layout
        self._compact_size = 0  # compacted slots per atom or edges (0: not compacted)
        self._input_buffer: np.ndarray | None = None  # [node_capacity + 3, 3]
        self._potentials: dict[bool, Potential] = {}  # full graph, compacted graph
        self._evaluate = _program  # the jitted evaluation for jax_device
        self._spin = False  # whether a call polls for its result (see host_wait)
        self._snapshot: ase.Atoms | None = None  # what self.atoms points at (see _remember)

    @property
    def _potential(self) -> Potential:
        """The potential of the full graph."""
        return self._potential_for(compacted=False)

    def _potential_for(self, compacted: bool) -> Potential:
        # looked up once per calculator (and again after unpickling), not per call:
        # the key serialises the hyper-parameters, tens of µs an MD step would pay
        if compacted not in self._potentials:
            self._potentials[compacted] = _shared(self.student, compacted)
        return self._potentials[compacted]

    def __getstate__(self) -> dict[str, Any]:
        """Host state only: the student (its parameters as host arrays), options,
        counters and ASE's own attributes (atoms, results, parameters)."""
        device_bound = {
            "jax_device",
            "_params",
            "_graph",
            "_reference",
            "_node_capacity",
            "_edge_capacity",
            "_slots",
            "_receiver_major",
            "_compact_size",
            "_input_buffer",
            "_potentials",
            "_evaluate",
            "_spin",
            "_snapshot",
        }
        state = {k: v for k, v in self.__dict__.items() if k not in device_bound}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        # pickled before these options
        self.__dict__.setdefault("edge_layout", "auto")
        self.__dict__.setdefault("compact_rows", "auto")
        self.__dict__.setdefault("compaction_overflows", 0)
        self.__dict__.setdefault("host_wait", "auto")
        self._forget_device()

    # -- neighbour list -------------------------------------------------------------

    def _needs_rebuild(self, atoms: ase.Atoms) -> bool:
        reference = self._reference
        if reference is None:
            return True
        if (
            len(reference.numbers) != len(atoms)
            or not np.array_equal(reference.numbers, atoms.numbers)
            or not np.array_equal(reference.pbc, atoms.pbc)
        ):
            return True
        positions = atoms.positions
        cell = atoms.cell.array
        half_skin = 0.5 * self.skin
        if np.array_equal(cell, reference.cell) or not np.any(atoms.pbc):
            # Fixed cell (or a molecule, whose cell plays no role): plain displacement.
            delta = positions - reference.positions
            if np.abs(delta).max(initial=0.0) * np.sqrt(3.0) <= half_skin:
                return False  # |d| <= sqrt(3) max|d_k|: settled without the norms (MD's case)
            return bool(np.einsum("ij,ij->i", delta, delta).max() > half_skin**2)
        if reference.inverse_cell is None:
            return True  # partly periodic and the cell changed: rebuild, keep it simple
        d, shrink = strained_displacement(
            positions, cell, reference.positions, reference.inverse_cell
        )
        return d + 0.5 * (self.student.cutoff + self.skin) * shrink > half_skin

    def _rebuild(self, atoms: ase.Atoms) -> None:
        validate_atoms(atoms, self.student.species, coincident=False)
        neighbours = neighbour_pairs(atoms, self.student.cutoff + self.skin)
        # the pairs at cutoff + skin include any coincident ones: refused by name
        validate_atoms(atoms, neighbours=neighbours)
        n_atoms = len(atoms)
        n_edges = len(neighbours.senders)
        device = resolve_device(self.device, n_atoms)
        receiver_major = uses_receiver_major(self.edge_layout, device.platform)
        new_system = self._reference is None or len(self._reference.numbers) != n_atoms
        if new_system:
            # A new system: size the graph for it (shapes seen before hit jit's cache).
            # Fine buckets: every padded node row and edge is computed on at every call.
            self._node_capacity = node_capacity(n_atoms)
            self._edge_capacity = _edge_capacity(n_edges)
            self._slots = slots_for([neighbours])
        else:
            # The same system moving: capacities only grow, so shrinking neighbour
            # counts never trigger a compilation.
            self._edge_capacity = max(self._edge_capacity, _edge_capacity(n_edges))
            self._slots = max(self._slots, slots_for([neighbours]))
        self._receiver_major = receiver_major
        self._choose_compaction(atoms, neighbours, device.platform, new_system)
        graph = batch_graphs(
            [atoms],
            self.student.cutoff,
            neighbours=[neighbours],
            node_capacity=self._node_capacity,
            edge_capacity=self._edge_capacity,
            graph_capacity=2,
            dtype=self.dtype,
            slots_per_node=self._slots if receiver_major else None,
        )
        if device != self.jax_device:
            # (the program first: a bad setting raises before anything is bound)
            self._evaluate = _program_for(device, os.environ.get(RESULT_MEMORY_ENV, RESULT_MEMORY))
            self._spin = _spins(self.host_wait, device.platform)
            self._params = jax.device_put(self.student.params, device)
            self.jax_device = device
        self._graph = jax.device_put(graph, device)
        self._input_buffer = np.zeros((self._node_capacity + 3, 3), dtype=self.dtype)
        pbc = atoms.pbc.copy()
        cell = atoms.cell.array.copy()
        self._reference = _Reference(
            positions=atoms.positions.copy(),
            cell=cell,
            inverse_cell=np.linalg.inv(cell) if np.all(pbc) else None,
            pbc=pbc,
            numbers=atoms.numbers.copy(),
        )
        self.neighbour_list_builds += 1

    def _choose_compaction(
        self, atoms: ase.Atoms, neighbours, platform: str, new_system: bool
    ) -> None:
        """Size the compacted graph from the pairs within the cutoff at this build: slots
        per atom on a receiver-major graph, edges on an edge list. The size only grows
        for a system (no compilation as counts fluctuate in MD)."""
        compact = self.compact_rows
        if compact == "auto":
            compact = len(atoms) >= COMPACT_MIN_ATOMS.get(platform, COMPACT_MIN_ATOMS["gpu"])
        if new_system or not compact:
            self._compact_size = 0
        if not compact:
            return
        vectors = pair_vectors(atoms, neighbours)
        cutoff = self.student.cutoff
        within = neighbours.receivers[np.einsum("ij,ij->i", vectors, vectors) < cutoff**2]
        if self._receiver_major:
            self._widen_compaction(int(np.bincount(within).max()) if len(within) else 1)
        else:
            self._widen_compaction(len(within))

    def _widen_compaction(self, largest: int) -> None:
        """Make the compacted graph hold ``largest`` pairs (per atom on a receiver-major
        graph, in all on an edge list), with the full graph's head-room."""
        size = slot_capacity(largest) if self._receiver_major else _edge_capacity(largest)
        self._compact_size = max(self._compact_size, size)

    @property
    def _compact_width(self) -> int | None:
        """Size of the compacted graph (slots per atom or edges), or None to run the
        full graph (not compacting, or a compaction no smaller than it)."""
        full = self._slots if self._receiver_major else self._edge_capacity
        size = self._compact_size
        return size if 0 < size < full else None

    def program(self, stress: bool = False, energies: bool = False):
        """The compiled evaluation of the current graph, as a call makes it:
        ``packed [node_capacity + 3, 3] -> flat result`` (layout:
        ``_evaluate_program``; compacted as the calculator compacts). For benchmarks
        and profiles: a call's program without ASE or the neighbour check."""
        width = self._compact_width
        return functools.partial(
            self._evaluate,
            self._potential_for(compacted=width is not None),
            self._params,
            self._graph,
            stress=stress,
            energies=energies,
            committee=self.committee,
            compact_width=width,
            cutoff=self.student.cutoff if width is not None else 0.0,
        )

    def _run(self, packed: np.ndarray, stress: bool, energies: bool) -> np.ndarray:
        """One evaluation, as a float64 host vector (layout: ``_evaluate_program``);
        run again on a larger graph where the compacted one lacked pairs."""
        for _ in range(2):  # the larger graph holds every pair, or is the full graph
            width = self._compact_width
            out = fetch(self.program(stress, energies)(packed), self._spin)
            if width is None or out[-1] <= width:
                return out
            self.compaction_overflows += 1
            self._widen_compaction(int(out[-1]))
        raise AssertionError("unreachable: the larger graph holds every pair within the cutoff")

    # -- ASE interface ----------------------------------------------------------------

    def check_state(self, atoms: ase.Atoms, tol: float = 1e-15) -> list[str]:
        """What changed since the last calculation: exact comparisons of what a student
        reads (positions, numbers, cell, pbc), cheaper than ASE's generic tolerance
        checks of every array (a per-call cost in MD)."""
        old = self.atoms
        if old is None or len(old) != len(atoms):
            return list(all_changes)
        changes = []
        if not np.array_equal(old.arrays["positions"], atoms.arrays["positions"]):
            changes.append("positions")
        if not np.array_equal(old.arrays["numbers"], atoms.arrays["numbers"]):
            changes.append("numbers")
        if not np.array_equal(old.cell.array, atoms.cell.array):
            changes.append("cell")
        if not np.array_equal(old.pbc, atoms.pbc):
            changes.append("pbc")
        return changes

    def _remember(self, atoms: ase.Atoms) -> None:
        """Keep ``self.atoms``, the snapshot ASE's ``check_state`` compares the next
        call against, as one host copy updated in place while only positions and cell
        change. ASE's ``Calculator.calculate`` makes a full ``atoms.copy()`` (and a
        directory check) on every call instead: tens of µs of an MD step spent on
        arrays and info a student never reads."""
        snapshot = self._snapshot
        if (
            snapshot is None
            or len(snapshot) != len(atoms)
            or not np.array_equal(snapshot.arrays["numbers"], atoms.arrays["numbers"])
            or not np.array_equal(snapshot.pbc, atoms.pbc)
        ):
            snapshot = self._snapshot = atoms.copy()
        else:
            snapshot.arrays["positions"][...] = atoms.arrays["positions"]
            snapshot.cell.array[...] = atoms.cell.array
        self.atoms = snapshot

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        if atoms is not None:
            self._remember(atoms)
        atoms = self.atoms
        periodic = bool(np.all(atoms.pbc))
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError("stress needs a cell periodic in all directions")
        if not np.isfinite(atoms.positions).all():
            validate_atoms(atoms)  # raises a ValueError naming the bad atoms
        if self._needs_rebuild(atoms):
            self._rebuild(atoms)
        n_atoms = len(atoms)
        packed = self._input_buffer
        packed[:n_atoms] = atoms.positions
        packed[self._node_capacity :] = atoms.cell.array if np.any(atoms.pbc) else 0.0
        with_stress = periodic and "stress" in properties
        with_energies = "energies" in properties
        # one transfer in (the packed buffer), one out (the packed result)
        out = self._run(packed, with_stress, with_energies)
        self.results = self._unpack_output(out, n_atoms, with_stress, with_energies)

    def _unpack_output(
        self, out: np.ndarray, n_atoms: int, with_stress: bool, with_energies: bool
    ) -> dict[str, Any]:
        """The results dict from the packed vector (layout: ``_evaluate_program``)."""
        capacity = self._node_capacity
        energy = float(out[0])
        results: dict[str, Any] = {
            "energy": energy,
            "free_energy": energy,
            "forces": out[1 : 1 + 3 * n_atoms].reshape(n_atoms, 3),
        }
        at = 1 + 3 * capacity
        if with_stress:
            results["stress"] = out[at : at + 6]
            at += 6
        if with_energies:
            results["energies"] = out[at : at + n_atoms]
            at += capacity
        if self.committee:
            force_std = out[at : at + n_atoms]
            results["force_std"] = force_std
            results["max_force_std"] = float(np.max(force_std)) if n_atoms else 0.0
            results["force_disagreement"] = (
                float(np.sqrt(np.mean(force_std**2))) if n_atoms else 0.0
            )
            results["energy_std"] = float(out[at + capacity])
        return results
