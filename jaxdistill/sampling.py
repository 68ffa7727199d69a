"""Sampling: which configurations the teacher labels.

Starting structures come from files (anything ``ase.io.read`` reads: extxyz, cif,
POSCAR, pdb ...) or from ``ase.build`` calls described in a small dict/YAML. Generators,
combinable in one configuration, turn each starting structure into frames:

- ``md``: teacher-driven Langevin molecular dynamics (``ase.md.langevin``) at a list of
  temperatures: velocities drawn from Maxwell–Boltzmann at the temperature, the first
  ``equilibration_steps`` discarded, then one frame every ``stride`` steps;
- ``rattle``: Gaussian displacements of every atom (``sigma_angstrom``);
- ``strain``: a random symmetric strain of the cell (components uniform in
  ``[-max_strain, max_strain]``, atoms scaled with the cell), optionally rattled too.

Every frame is tagged in ``atoms.info`` with ``sampler``, ``temperature_kelvin`` (NaN
when not from MD), ``seed`` (the seed that reproduces that frame or trajectory) and
``structure_index``. Exact duplicates are removed, element coverage is checked (every
element of the starting structures must appear in the frames), and everything follows
from ``SamplingConfig.seed``.

Example YAML (the ``sampling`` section of a pipeline config)::

    seed: 0
    structures:
      - build: bulk
        args: {name: Si, crystalstructure: diamond, a: 5.43, cubic: true}
        repeat: [2, 2, 2]
      - file: water.xyz
    md:
      temperatures_kelvin: [300, 900]
      frames_per_temperature: 50
      stride: 10
      equilibration_steps: 200
      timestep_fs: 1.0
    rattle: {count: 20, sigma_angstrom: 0.05}
    strain: {count: 20, max_strain: 0.03, sigma_angstrom: 0.02}
"""

from __future__ import annotations

import dataclasses
import math
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ase
import ase.build
import ase.data
import ase.io
import numpy as np

from jaxdistill.config.sampling import (
    _STREAM,
    MDConfig,
    MeltConfig,
    SamplingConfig,
)
from jaxdistill.data.arrays import frame_hash
from jaxdistill.teachers.base import Teacher

__all__ = [
    "check_element_coverage",
    "deduplicate",
    "derive_seed",
    "element_counts",
    "load_structures",
    "sample",
    "sampler_counts",
    "tag_frame",
]


def derive_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed derived from a master seed and integer keys (``SeedSequence``).

    Each (generator, structure, temperature or frame) gets its own independent stream,
    so a frame can be reproduced alone and adding structures never changes the frames
    of the others.
    """
    return int(np.random.SeedSequence([int(seed), *(int(k) for k in keys)]).generate_state(1)[0])


def load_structures(config: SamplingConfig) -> list[ase.Atoms]:
    """All starting structures of a config, in order (``info['structure_index']`` set)."""
    structures = []
    for spec in config.structures:
        for atoms in spec.load():
            atoms.info["structure_index"] = len(structures)
            atoms.info["_generators"] = spec.generators
            structures.append(atoms)
    return structures


#: ``info`` keys carried from a starting structure to its frames (OMol-style teachers
#: need the total charge and spin multiplicity); everything else is replaced by tags.
CARRIED_INFO = ("charge", "spin")


def tag_frame(
    atoms: ase.Atoms, sampler: str, temperature: float, seed: int, structure_index: int
) -> ase.Atoms:
    """Replace ``atoms.info`` by the sampling tags (keeping charge and spin), drop any
    calculator, and wrap periodic atoms into the cell; returns ``atoms`` (changed)."""
    atoms.info = {
        **{k: atoms.info[k] for k in CARRIED_INFO if k in atoms.info},
        "sampler": sampler,
        "temperature_kelvin": float(temperature),
        "seed": int(seed),
        "structure_index": int(structure_index),
    }
    atoms.calc = None
    if np.all(atoms.pbc):
        atoms.wrap()
    return atoms


def _rattled(atoms: ase.Atoms, sigma: float, rng: np.random.Generator) -> ase.Atoms:
    out = atoms.copy()
    if sigma > 0:
        out.positions = out.positions + rng.normal(0.0, sigma, size=out.positions.shape)
    return out


def _strained(
    atoms: ase.Atoms, max_strain: float, sigma: float, rng: np.random.Generator
) -> ase.Atoms:
    eps = rng.uniform(-max_strain, max_strain, size=(3, 3))
    deformation = np.eye(3) + 0.5 * (eps + eps.T)  # symmetric: no rigid rotation
    out = atoms.copy()
    if np.any(out.pbc):
        out.set_cell(out.cell.array @ deformation, scale_atoms=True)
    else:
        centre = out.positions.mean(axis=0)
        out.positions = centre + (out.positions - centre) @ deformation
    return _rattled(out, sigma, rng)


def _run_md(
    atoms: ase.Atoms,
    md: MDConfig,
    temperature: float,
    seed: int,
    calculator: Any,
    on_steps: Callable[[int], None],
    melt: MeltConfig | None = None,
) -> list[ase.Atoms]:
    """One teacher Langevin trajectory through ``run_md``'s ASE engine: an optional melt
    phase, equilibration, then ``frames_per_temperature`` frames every ``stride`` steps.

    One generator (``seed``) gives the velocities and every phase's Langevin noise, so
    the phases continue one stream. The stability rules are run_md's, without the
    fragment check (a teacher may break bonds at high temperature: those are data).
    """
    from ase.md.velocitydistribution import thermalize_momenta

    from jaxdistill.md import MDInstabilityError, run_md

    rng = np.random.default_rng(seed)
    work = atoms.copy()
    work.info = {k: atoms.info[k] for k in CARRIED_INFO if k in atoms.info}
    start_kelvin = melt.melt_kelvin if melt is not None else temperature
    thermalize_momenta(work, temperature_K=start_kelvin, rng=rng)

    def phase(state: ase.Atoms, kelvin: float, steps: int, stride: int, keep: bool):
        summary = run_md(
            calculator,
            state,
            engine="ase",
            ensemble="nvt",
            temperature_kelvin=kelvin,
            timestep_fs=md.timestep_fs,
            friction_per_fs=md.friction_per_fs,
            steps=steps,
            sample_every=stride,
            initial_velocities="atoms",
            rng=rng,
            bond_factor=None,
            keep_frames=keep,
        )
        on_steps(steps)
        return summary

    try:
        if melt is not None and melt.steps:
            work = phase(work, start_kelvin, melt.steps, melt.steps, False).atoms
        if md.equilibration_steps:
            work = phase(
                work, temperature, md.equilibration_steps, md.equilibration_steps, False
            ).atoms
        steps = md.frames_per_temperature * md.stride
        frames = phase(work, temperature, steps, md.stride, True).frames[0] if steps else []
    except MDInstabilityError as error:
        error.args = (f"teacher MD at {temperature} K (seed {seed}): {error}",)
        raise
    offset = (melt.steps if melt is not None else 0) + md.equilibration_steps
    for k, frame in enumerate(frames):
        frame.calc = None  # frames are unlabelled until the teacher labels them
        frame.info = {
            **{key: atoms.info[key] for key in CARRIED_INFO if key in atoms.info},
            "md_step": offset + (k + 1) * md.stride,
        }
    return frames


def _trajectory(
    atoms: ase.Atoms,
    md: MDConfig,
    sampler: str,
    temperature: float,
    seed: int,
    calculator: Any,
    on_steps: Callable[[int], None],
    cache: Path | None,
) -> list[ase.Atoms]:
    """One teacher MD trajectory, tagged; saved to ``cache`` (atomically) when given."""
    s_idx = int(atoms.info["structure_index"])
    melt = md.melt if sampler == "md-melt" else None
    tagged = []
    for frame in _run_md(atoms, md, temperature, seed, calculator, on_steps, melt=melt):
        step = frame.info["md_step"]
        tagged.append(tag_frame(frame, sampler, temperature, seed, s_idx))
        tagged[-1].info["md_step"] = step
    if cache is not None:
        # Written whole, then renamed: a kill never leaves half a file.
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(".partial.extxyz")
        ase.io.write(partial, tagged, format="extxyz")
        partial.replace(cache)
    return tagged


def _trajectory_job(
    spec: str,
    options: dict[str, Any],
    atoms: ase.Atoms,
    md: MDConfig,
    sampler: str,
    temperature: float,
    seed: int,
    cache: Path,
) -> int:
    """A Dask worker's trajectory (its teacher is loaded once per worker process)."""
    from jaxdistill.cluster import prepare_worker, worker_teacher

    prepare_worker()
    calculator = worker_teacher(spec, options).as_calculator()
    frames = _trajectory(atoms, md, sampler, temperature, seed, calculator, lambda n: None, cache)
    return len(frames)


def _run_on_cluster(
    jobs: list[tuple[ase.Atoms, str, float, int, int, Path]],
    spec: str,
    options: dict[str, Any],
    md: MDConfig,
    cluster: Any,
    on_steps: Callable[[int], None],
    console: Any | None = None,
) -> None:
    """Run trajectories as Dask tasks; each lands in its cache file.

    A worker that dies has its trajectory started again (from the beginning: one
    trajectory is the unit of work) on another worker by Dask; finished ones are in
    their cache files, so a rerun of a failed sampling redoes only the unfinished ones.
    """
    if not jobs:
        return
    from distributed import as_completed

    from jaxdistill.cluster import open_client

    run = uuid.uuid4().hex[:8]  # fresh task keys: a rerun never gets an old result
    with open_client(cluster, console=console) as client:
        futures = {
            client.submit(
                _trajectory_job,
                spec,
                options,
                atoms,
                md,
                sampler,
                t,
                seed,
                path,
                key=f"trajectory-{path.stem}-{run}",
                pure=False,
            ): steps
            for atoms, sampler, t, seed, steps, path in jobs
        }
        try:
            for future in as_completed(futures):
                future.result()  # a worker's exception surfaces here
                on_steps(futures[future])
        except BaseException:
            client.cancel(list(futures))
            raise


def _md_trajectories(md: MDConfig | None) -> list[tuple[str, int, float, int]]:
    """(sampler, index, target temperature, steps) of every MD trajectory per structure."""
    if md is None or md.frames_per_temperature == 0:
        return []
    kept = md.equilibration_steps + md.frames_per_temperature * md.stride
    plain = [("md", i, t, kept) for i, t in enumerate(md.temperatures_kelvin)]
    melted = []
    if md.melt is not None:
        melted = [
            ("md-melt", i, t, md.melt.steps + kept)
            for i, t in enumerate(md.melt.temperatures_kelvin)
        ]
    return plain + melted


def _trajectory_cache(
    cache_dir: str | Path | None,
    atoms: ase.Atoms,
    md: MDConfig,
    sampler: str,
    temperature: float,
    seed: int,
) -> Path | None:
    if cache_dir is None:
        return None
    import hashlib
    import json

    key = json.dumps(
        [dataclasses.asdict(md), sampler, temperature, seed, frame_hash(atoms)],
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{sampler}-{temperature:g}K-{digest}.extxyz"


def element_counts(frames: Sequence[ase.Atoms]) -> dict[str, int]:
    """Atom counts per element symbol over frames, ordered by atomic number."""
    counter: Counter[int] = Counter()
    for atoms in frames:
        counter.update(int(z) for z in atoms.numbers)
    return {ase.data.chemical_symbols[z]: counter[z] for z in sorted(counter)}


def sampler_counts(frames: Sequence[ase.Atoms]) -> dict[str, int]:
    """Frame counts per ``info['sampler']``."""
    return dict(Counter(str(a.info.get("sampler", "unknown")) for a in frames))


def check_element_coverage(
    frames: Sequence[ase.Atoms], elements: Sequence[str] | set[str]
) -> dict[str, int]:
    """Check that every element appears in the frames.

    Args:
        frames: The data set.
        elements: Element symbols that must appear (e.g. those of the starting
            structures).

    Returns:
        Atom counts per element (see :func:`element_counts`).

    Raises:
        ValueError: Some element never appears; the message lists it and the counts.
    """
    counts = element_counts(frames)
    missing = sorted(set(elements) - set(counts), key=lambda s: ase.data.atomic_numbers[s])
    if missing:
        raise ValueError(
            f"element(s) {missing} of the starting structures never appear in the {len(frames)} "
            f"sampled frames (element counts: {counts}); a student trained on them would know "
            "nothing about these elements. Enable a generator for the structures that hold them."
        )
    return counts


def deduplicate(frames: Sequence[ase.Atoms]) -> list[ase.Atoms]:
    """Remove exact duplicates (same numbers, positions, cell and pbc, bit for bit),
    keeping the first occurrence and the order."""
    seen: set[str] = set()
    out = []
    for atoms in frames:
        key = frame_hash(atoms)
        if key not in seen:
            seen.add(key)
            out.append(atoms)
    return out


def sample(
    config: SamplingConfig | Mapping[str, Any],
    teacher: Teacher | str | None = None,
    progress: bool = False,
    console: Any | None = None,
    cache_dir: str | Path | None = None,
    workers: int = 1,
    teacher_options: Mapping[str, Any] | None = None,
    cluster: Any | None = None,
) -> list[ase.Atoms]:
    """Generate frames from a sampling config.

    Args:
        config: A :class:`SamplingConfig` or a dict for :meth:`SamplingConfig.from_dict`.
        teacher: Teacher (or spec) driving the MD generator; ``config.md.teacher`` wins
            when set. Not needed without MD.
        progress: Show a rich progress bar (MD steps).
        console: ``rich.console.Console`` for the bar (default: stderr).
        cache_dir: If given, each finished MD trajectory is saved there (named by a
            hash of everything that determines it) and read back instead of rerun: a
            killed sampling run loses at most the trajectory in progress.
        workers: N > 1 runs the teacher MD trajectories on a local Dask cluster of N
            worker processes (``cluster=ClusterConfig(workers=N)``; on a machine with
            GPUs they take the GPUs in turn). A small system leaves a GPU mostly idle
            per step, so several trajectories side by side finish several times sooner;
            the frames are the same as with one worker.
        teacher_options: Keyword arguments of :func:`~jaxdistill.load_teacher` for the
            MD teacher (e.g. ``{"device": "cuda"}``).
        cluster: Run the trajectories as Dask tasks there: a
            :class:`~jaxdistill.config.cluster.ClusterConfig` (a cluster started for
            this call) or a ready ``distributed.Client`` (docs/cluster.md). Needs
            ``cache_dir`` (each trajectory lands in its file; it must be on a
            filesystem the workers see) and the teacher as a spec string (each worker
            loads its own).

    Returns:
        The frames: per structure, MD frames (by temperature), then rattled, then
        strained (and the initial structure first if ``include_initial``). Each has
        ``info`` tags ``sampler``, ``temperature_kelvin``, ``seed``, ``structure_index``
        (and ``md_step`` for MD); MD frames carry momenta.

    Raises:
        ValueError: Nothing is generated, MD is requested without a teacher, or an
            element of the starting structures never appears (``check_coverage``).
    """
    if not isinstance(config, SamplingConfig):
        config = SamplingConfig.from_dict(config)
    structures = load_structures(config)
    seed = config.seed

    def applies(atoms: ase.Atoms, name: str) -> bool:
        chosen = atoms.info.get("_generators")
        return getattr(config, name) is not None and (chosen is None or name in chosen)

    md = config.md
    md_structures = [a for a in structures if applies(a, "md")]
    spec = None
    if md is not None and md_structures and md.frames_per_temperature > 0:
        spec = md.teacher if md.teacher is not None else teacher
        if spec is None:
            raise ValueError(
                "MD sampling needs a teacher: pass teacher= (or --teacher) or set md.teacher"
            )
    loaded: dict[str, Any] = {}

    def calculator() -> Any:
        """The MD teacher's calculator, loaded on first use (not at all when cached)."""
        if "calculator" not in loaded:
            from jaxdistill.teachers.registry import load_teacher

            options = dict(teacher_options or {})
            loaded["calculator"] = load_teacher(spec, **options).as_calculator()
        return loaded["calculator"]

    trajectories = _md_trajectories(md) if spec is not None else []
    md_steps_total = len(md_structures) * sum(steps for _, _, _, steps in trajectories)

    from jaxdistill.progress import progress_bar

    # (structure, sampler, temperature, seed, steps, cache file) of every trajectory
    md_jobs: list[tuple[ase.Atoms, str, float, int, int, Path | None]] = []
    for atoms in md_structures:
        s_idx = int(atoms.info["structure_index"])
        for sampler, t_idx, temperature, steps in trajectories:
            md_seed = derive_seed(seed, _STREAM[sampler], s_idx, t_idx)
            path = _trajectory_cache(cache_dir, atoms, md, sampler, temperature, md_seed)
            md_jobs.append((atoms, sampler, temperature, md_seed, steps, path))

    frames: list[ase.Atoms] = []
    with progress_bar(console, enabled=progress and md_steps_total > 0) as bar:
        task = bar.add_task("teacher MD (steps)", total=md_steps_total)
        if cluster is None and workers > 1:
            from jaxdistill.config.cluster import ClusterConfig

            cluster = ClusterConfig(workers=workers)
        fanned_out = cluster is not None and bool(md_jobs)
        if fanned_out:
            if cache_dir is None:
                raise ValueError("parallel teacher MD (workers > 1, cluster) needs a cache_dir")
            if not isinstance(spec, str):
                raise ValueError(
                    "parallel teacher MD (workers > 1, cluster) needs the teacher as a spec "
                    "string (each worker process loads its own)"
                )
            pending = [job for job in md_jobs if not job[-1].is_file()]
            bar.update(task, advance=md_steps_total - sum(job[4] for job in pending))
            _run_on_cluster(
                pending,
                spec,
                dict(teacher_options or {}),
                md,
                cluster,
                lambda n: bar.update(task, advance=n),
                console=console if progress else None,
            )
        by_structure: dict[int, list] = {}
        for job in md_jobs:
            by_structure.setdefault(int(job[0].info["structure_index"]), []).append(job)
        for atoms in structures:
            s_idx = int(atoms.info["structure_index"])
            if config.include_initial:
                frames.append(tag_frame(atoms.copy(), "initial", math.nan, -1, s_idx))
            if applies(atoms, "md"):
                for _, sampler, temperature, md_seed, steps, cached in by_structure.get(s_idx, []):
                    if cached is not None and cached.is_file():
                        frames.extend(ase.io.read(cached, index=":"))
                        if not fanned_out:
                            bar.update(task, advance=steps)
                        continue
                    frames.extend(
                        _trajectory(
                            atoms,
                            md,
                            sampler,
                            temperature,
                            md_seed,
                            calculator(),
                            lambda n: bar.update(task, advance=n),
                            cached,
                        )
                    )
            if config.rattle is not None and applies(atoms, "rattle"):
                for i in range(config.rattle.count):
                    f_seed = derive_seed(seed, _STREAM["rattle"], s_idx, i)
                    new = _rattled(
                        atoms, config.rattle.sigma_angstrom, np.random.default_rng(f_seed)
                    )
                    frames.append(tag_frame(new, "rattle", math.nan, f_seed, s_idx))
            if config.strain is not None and applies(atoms, "strain"):
                for i in range(config.strain.count):
                    f_seed = derive_seed(seed, _STREAM["strain"], s_idx, i)
                    rng = np.random.default_rng(f_seed)
                    new = _strained(
                        atoms, config.strain.max_strain, config.strain.sigma_angstrom, rng
                    )
                    frames.append(tag_frame(new, "strain", math.nan, f_seed, s_idx))

    if not frames:
        raise ValueError(
            "the sampling config produces no frames: enable md, rattle, strain (with count > 0) "
            "or include_initial"
        )
    if config.deduplicate:
        before = len(frames)
        frames = deduplicate(frames)
        if len(frames) < before:
            warnings.warn(f"removed {before - len(frames)} exact duplicate frame(s)", stacklevel=2)
    if config.check_coverage:
        required = {ase.data.chemical_symbols[int(z)] for a in structures for z in a.numbers}
        check_element_coverage(frames, required)
    return frames
