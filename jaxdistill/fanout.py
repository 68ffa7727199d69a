"""Labelling fanned out on Dask: shards labelled by workers, merged in input order.

:func:`label_on_cluster` splits the frames into contiguous shards (a plan written once,
``<store>.shards/plan.json``, and kept across reruns whatever the number of workers).
Each shard is labelled by a worker with :func:`jaxdistill.labelling.label` into its own
HDF5 store, ``<store>.shards/shard-XXXX.h5``: resumable and crash-safe as any label
store, so a worker killed mid-batch loses at most that batch, and the next attempt (Dask
reschedules the task; or a rerun of the command) resumes the shard after its last
committed frame. A lock file per shard keeps two processes from writing one shard. When
every shard is complete they are appended, in input order, to the store itself, whose
input description, frame hashes and teacher provenance are those a single-process
``label()`` would have written, so training and a later ``label()`` resume see no
difference. The merge resumes too (from the store's committed frames), and the shards
are deleted once it is checked.

The store folder must be on a filesystem every worker sees at the same path (local
disk for a local cluster; a shared filesystem for SLURM or a remote scheduler).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ase
import ase.io
import numpy as np

from jaxdistill.cluster import n_workers, open_client, prepare_worker, worker_teacher
from jaxdistill.config.cluster import ClusterConfig
from jaxdistill.data.arrays import LabelArrays, frame_hash, frames_fingerprint
from jaxdistill.data.store import LabelStore, LabelStoreError
from jaxdistill.labelling import LabelSummary, frame_problems, label, read_frames
from jaxdistill.progress import progress_bar
from jaxdistill.teachers.base import TeacherLabels

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["SHARDS_PER_WORKER", "label_on_cluster", "shard_folder"]

#: Default shards per worker: a slow or killed worker then holds back a quarter of its
#: share, not all of it.
SHARDS_PER_WORKER = 4
PLAN_FILE = "plan.json"
PLAN_VERSION = 1
_MERGE_BLOCK = 2048  # frames per append while merging (bounded memory, resumable)
_POLL_S = 0.5  # seconds between progress polls of the shard files
#: Teacher provenance keys that must agree between shards and the store (as label()).
_PROVENANCE_KEYS = (
    "name",
    "spec",
    "package",
    "version",
    "weights_sha256",
    "precision",
    "ensemble_size",
)


def shard_folder(store_path: str | Path) -> Path:
    """The folder of a store's shards: ``<store>.shards`` beside it."""
    store_path = Path(store_path)
    return store_path.with_name(store_path.name + ".shards")


def _shard_path(folder: Path, index: int) -> Path:
    return folder / f"shard-{index:04d}.h5"


def _read_input(
    frames: Sequence[ase.Atoms] | str | Path, skip_bad_frames: bool
) -> tuple[list[ase.Atoms], str, tuple[str, ...]]:
    """The frames to label, the store's input ``source`` and the skipped lines, exactly
    as :func:`jaxdistill.labelling.label` derives them (so the merged store matches)."""
    items, source = read_frames(frames)
    if not items:
        raise ValueError(f"no frames to label in {source}")
    problems = frame_problems(items)
    if problems and not skip_bad_frames:
        first = min(problems)
        more = f" (and {len(problems) - 1} more bad frames)" if len(problems) > 1 else ""
        raise ValueError(
            f"frame {first} of {source}: {problems[first]}{more}; nothing labelled. "
            "Fix or remove it, or pass --skip-bad-frames (skip_bad_frames=True)"
        )
    if not problems:
        return items, source, ()
    skipped = tuple(f"frame {i} of {source}: {why}" for i, why in sorted(problems.items()))
    items = [atoms for i, atoms in enumerate(items) if i not in problems]
    if not items:
        raise ValueError(f"every frame of {source} is bad; nothing to label")
    return items, f"{source} (less {len(problems)} bad frames)", skipped


def _same(a: Any, b: Any) -> bool:
    """Equal as the store keeps them (through JSON)."""
    dump = lambda v: json.dumps(v, sort_keys=True, default=str)  # noqa: E731
    return dump(a) == dump(b)


def _provenance_mismatch(stored: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return [
        f"{k}: {stored.get(k)!r} vs {new.get(k)!r}"
        for k in _PROVENANCE_KEYS
        if not _same(stored.get(k), new.get(k))
    ]


def _store_progress(store_path: Path, fingerprint: str, hashes: Sequence[str]) -> int:
    """Frames already in the store (0 when absent); refuses a store of another input."""
    if not store_path.exists():
        return 0
    with LabelStore(store_path) as store:
        stored = store.input_info
        if stored.get("fingerprint") != fingerprint:
            raise LabelStoreError(
                f"{store_path} was labelled from a different input "
                f"({stored.get('n_frames')} frames from {stored.get('source')!r}); this input "
                f"has {len(hashes)} frames. Use a new output path, or the original input."
            )
        done = len(store)
        if store.input_hashes() != list(hashes[:done]):
            raise LabelStoreError(
                f"{store_path}: stored frames do not match the input's first {done} frames"
            )
        return done


def _plan(
    folder: Path, fingerprint: str, start: int, n_frames: int, n_shards: int | None
) -> list[tuple[int, int]] | None:
    """The shards' input ranges ``[(lo, hi), ...]``: the saved plan when there is one
    (checked against this input), else a new one when ``n_shards`` is given (written),
    else None."""
    path = folder / PLAN_FILE
    if path.is_file():
        plan = json.loads(path.read_text())
        if plan.get("fingerprint") != fingerprint or plan.get("n_frames") != n_frames:
            raise LabelStoreError(
                f"{folder} holds shards of a different input; delete the folder (its "
                "labels are not in the store) or label the original input"
            )
        if int(plan["start"]) > start:
            raise LabelStoreError(
                f"{folder} was planned after {plan['start']} frames of the store, which "
                f"now holds {start}; delete the folder to label again"
            )
        return [(int(lo), int(hi)) for lo, hi in plan["bounds"]]
    if n_shards is None:
        return None
    n_shards = max(1, min(int(n_shards), n_frames - start))
    edges = np.linspace(start, n_frames, n_shards + 1).round().astype(int)
    bounds = [(int(lo), int(hi)) for lo, hi in itertools.pairwise(edges)]
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(
        {
            "version": PLAN_VERSION,
            "fingerprint": fingerprint,
            "n_frames": n_frames,
            "start": start,
            "bounds": bounds,
        },
        indent=1,
    )
    partial = path.with_suffix(".partial")
    partial.write_text(text)
    partial.replace(path)  # atomic: a kill leaves no half-written plan
    return bounds


def _shard_count(path: Path) -> int:
    """Committed frames of a shard (0 when absent or unreadable at this instant)."""
    if not path.exists():
        return 0
    try:
        with LabelStore(path) as shard:
            return len(shard)
    except (OSError, LabelStoreError):  # being created or grown: count it next poll
        return 0


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (waits for another holder to finish or
    die: the kernel drops a dead process's lock)."""
    import fcntl

    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _label_shard(
    spec: str,
    teacher_options: Mapping[str, Any],
    frames: list[ase.Atoms],
    shard_path: str,
    batch_size: int | None,
    durable: bool,
    label_kwargs: Mapping[str, Any],
) -> int:
    """A worker's task: label one shard (resuming it); returns the frames labelled now."""
    from rich.console import Console

    prepare_worker()
    teacher = worker_teacher(spec, teacher_options)
    path = Path(shard_path)
    # Dask may start a task again while a lost worker still runs it (a network
    # partition, not a kill): one writer per shard.
    with _exclusive(path.with_suffix(".lock")):
        summary = label(
            teacher,
            frames,
            path,
            batch_size=batch_size,
            progress=False,
            # quiet: a disabled bar still ends with a newline, one per shard in the log
            console=Console(quiet=True),
            durable=durable,
            **label_kwargs,
        )
    return summary.n_labelled


def _shard_labels(arr: LabelArrays, i: int) -> TeacherLabels:
    return TeacherLabels(
        energy=float(arr.energy[i]),
        forces=arr.forces[arr.offsets[i] : arr.offsets[i + 1]],
        stress=arr.stress[i],
        force_disagreement=float(arr.force_disagreement[i]),
        energy_disagreement=float(arr.energy_disagreement[i]),
    )


def _shard_hessian(arr: LabelArrays, i: int) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = arr.offsets[i], arr.offsets[i + 1]
    return (
        np.swapaxes(arr.hessian_directions[lo:hi], 0, 1),
        np.swapaxes(arr.hessian_products[lo:hi], 0, 1),
    )


def _check_equal(merged: LabelArrays, shard: LabelArrays, lo: int, where: str) -> None:
    """Every field the shard holds arrived unchanged (``input_index`` shifted by the
    shard's start); a field the merge does not carry fails here instead of vanishing."""
    for field in dataclasses.fields(LabelArrays):
        a, b = getattr(merged, field.name), getattr(shard, field.name)
        if field.name in ("frame_index", "offsets"):
            continue  # positions in the file, not data
        if field.name == "input_index":
            b = b + lo
        if a is None and b is None:
            continue
        a, b = np.asarray(a), np.asarray(b)
        equal = a.shape == b.shape and (
            np.array_equal(a, b, equal_nan=True) if a.dtype.kind in "fc" else np.array_equal(a, b)
        )
        if not equal:
            raise LabelStoreError(f"merging {where}: field {field.name!r} changed in the copy")
    if not np.array_equal(np.diff(merged.offsets), np.diff(shard.offsets)):
        raise LabelStoreError(f"merging {where}: atom counts changed in the copy")


def _merge(
    store_path: Path,
    folder: Path,
    bounds: list[tuple[int, int]],
    hashes: Sequence[str],
    input_info: Mapping[str, Any],
    n_atoms: int,
    durable: bool,
) -> None:
    """Append the complete shards to the store in input order, from its committed
    frames on (a merge killed halfway resumes), checking every copied block."""
    shards = [_shard_path(folder, k) for k in range(len(bounds))]
    with LabelStore(shards[0]) as first:
        teacher, hessian = first.teacher, first.hessian
    if store_path.exists():
        store = LabelStore(store_path, mode="a", durable=durable)
        mismatch = _provenance_mismatch(store.teacher, teacher)
        if mismatch or not _same(store.hessian, hessian):
            store.close()
            raise LabelStoreError(
                f"{store_path} was labelled by a different teacher or Hessian settings than "
                f"its shards in {folder}; refusing to mix labels: {mismatch or 'hessian'}"
            )
    else:
        store = LabelStore.create(
            store_path,
            teacher=teacher,
            capacity_frames=int(input_info["n_frames"]),
            capacity_atoms=max(1, n_atoms),
            input_info=input_info,
            hessian=hessian or None,
            durable=durable,
        )
    try:
        for path, (lo, hi) in zip(shards, bounds, strict=True):
            with LabelStore(path) as shard:
                mismatch = _provenance_mismatch(shard.teacher, teacher)
                if mismatch or not _same(shard.hessian, hessian):
                    raise LabelStoreError(
                        f"{path} was labelled by another teacher or with other Hessian "
                        f"settings than {shards[0]}: {mismatch or 'hessian'}; delete {folder}"
                    )
                if len(shard) != hi - lo or shard.input_hashes() != list(hashes[lo:hi]):
                    raise LabelStoreError(f"{path} does not hold input frames {lo}..{hi - 1}")
                for block in range(max(len(store), lo), hi, _MERGE_BLOCK):
                    rows = np.arange(block - lo, min(block + _MERGE_BLOCK, hi) - lo)
                    arr = shard.arrays(rows)
                    frames = shard.to_atoms(rows)  # tags (sampler, seed ...) in info
                    at = len(store)
                    store.append(
                        frames,
                        [_shard_labels(arr, i) for i in range(len(rows))],
                        input_indices=(rows + lo).tolist(),
                        input_hashes=[hashes[lo + int(r)] for r in rows],
                        hessian=(
                            [_shard_hessian(arr, i) for i in range(len(rows))] if hessian else None
                        ),
                    )
                    written = store.arrays(np.arange(at, len(store)))
                    _check_equal(written, arr, lo, f"{path} into {store_path}")
    finally:
        store.close()


def label_on_cluster(
    teacher: str,
    frames: Sequence[ase.Atoms] | str | Path,
    store_path: str | Path,
    cluster: ClusterConfig | Client | None = None,
    *,
    teacher_options: Mapping[str, Any] | None = None,
    batch_size: int | None = None,
    shards: int | None = None,
    progress: bool = True,
    console: Any | None = None,
    durable: bool = True,
    skip_bad_frames: bool = False,
    keep_shards: bool = False,
    **label_kwargs: Any,
) -> LabelSummary:
    """Label frames with a teacher on a Dask cluster into one store; resumable, each
    frame stored exactly once whatever worker dies when.

    The result is the store ``label(teacher, frames, store_path)`` would write (same
    frames in input order, input description, frame hashes and teacher provenance), so
    it can be resumed or extended by either function.

    Args:
        teacher: the teacher spec (``sevennet:7net-0``, ``fennol:/path/*.fnx``, ...):
            every worker loads its own copy (once per worker process).
        frames: structures, or a file ``ase.io.read`` reads (all frames).
        store_path: the HDF5 store; shards go to ``<store_path>.shards/`` meanwhile.
        cluster: a :class:`~jaxdistill.config.cluster.ClusterConfig` (a cluster started
            for this call and closed after), a ready ``distributed.Client``, or None
            (a local cluster: one worker per GPU, or CPU workers).
        teacher_options: keyword arguments of :func:`~jaxdistill.load_teacher` in the
            workers, e.g. ``{"device": "cuda"}`` (a worker pinned to one GPU sees it as
            ``cuda``).
        batch_size: frames per teacher call and per commit in each shard.
        shards: how many shards to split the frames into (first run only; default
            ``cluster.shards``, else four per worker).
        progress: one progress bar over all workers (committed frames).
        console: a ``rich.console.Console`` for it (default: stderr).
        durable: fsync after each commit.
        skip_bad_frames: leave out frames a teacher should not see, as ``label()``.
        keep_shards: keep ``<store_path>.shards/`` after the merge (default: deleted).
        **label_kwargs: passed on to each shard's :func:`~jaxdistill.labelling.label`
            (``hessian_directions=K`` and its settings ...).

    Returns:
        A :class:`~jaxdistill.labelling.LabelSummary` of the whole store.

    Raises:
        ValueError: a bad frame (unless ``skip_bad_frames``) or bad labels (naming the
            shard and the frame); LabelStoreError: the store or its shards belong to
            another input or teacher.
    """
    if not isinstance(teacher, str):
        raise TypeError(
            "label_on_cluster needs the teacher as a spec string (each worker loads its "
            f"own), got {type(teacher).__name__}"
        )
    started = time.perf_counter()
    store_path = Path(store_path)
    items, source, skipped = _read_input(frames, skip_bad_frames)
    hashes = [frame_hash(x) for x in items]
    fingerprint = frames_fingerprint(hashes)
    input_info = {"n_frames": len(items), "fingerprint": fingerprint, "source": source}
    n_frames = len(items)
    folder = shard_folder(store_path)
    start = _store_progress(store_path, fingerprint, hashes)
    labelled_now = 0

    if start < n_frames:
        config = cluster if isinstance(cluster, ClusterConfig) else None
        bounds = _plan(folder, fingerprint, start, n_frames, None)
        counts = (
            [_shard_count(_shard_path(folder, k)) for k in range(len(bounds))] if bounds else []
        )
        complete = bounds is not None and all(
            c == hi - lo for c, (lo, hi) in zip(counts, bounds, strict=True)
        )
        if not complete:
            with open_client(cluster, console=console if progress else None) as client:
                if bounds is None:
                    wanted = shards or (config.shards if config else None)
                    bounds = _plan(
                        folder,
                        fingerprint,
                        start,
                        n_frames,
                        wanted or SHARDS_PER_WORKER * max(1, n_workers(client)),
                    )
                labelled_now = _run_shards(
                    client,
                    teacher,
                    dict(teacher_options or {}),
                    items,
                    bounds,
                    folder,
                    start,
                    n_frames,
                    batch_size,
                    durable,
                    label_kwargs,
                    progress,
                    console,
                )
        n_atoms = sum(len(x) for x in items)
        _merge(store_path, folder, bounds, hashes, input_info, n_atoms, durable)
        if not keep_shards:
            shutil.rmtree(folder, ignore_errors=True)
    elif folder.exists() and not keep_shards:
        shutil.rmtree(folder, ignore_errors=True)  # merged by a run killed before cleaning

    seconds = time.perf_counter() - started
    with LabelStore(store_path) as store:
        if len(store) != n_frames:
            raise LabelStoreError(f"{store_path} holds {len(store)} of {n_frames} frames")
        return LabelSummary(
            path=store_path,
            n_frames=len(store),
            n_labelled=labelled_now,
            n_resumed=n_frames - labelled_now,
            n_atoms=store.n_atoms_total,
            elements=store.element_counts(),
            seconds=seconds,
            seconds_per_frame=seconds / labelled_now if labelled_now else math.nan,
            skipped=skipped,
            hessian=store.hessian or None,
        )


def _run_shards(
    client: Client,
    teacher: str,
    teacher_options: dict[str, Any],
    items: list[ase.Atoms],
    bounds: list[tuple[int, int]],
    folder: Path,
    start: int,
    n_frames: int,
    batch_size: int | None,
    durable: bool,
    label_kwargs: Mapping[str, Any],
    progress: bool,
    console: Any | None,
) -> int:
    """Label the incomplete shards on the cluster, one bar over all; returns the frames
    labelled by this run.

    A worker that dies (killed, out of memory) has its task started again on another
    worker by Dask (up to ``distributed.scheduler.allowed-failures`` times), which
    resumes the shard; an error raised by a task stops the run (rerun to resume)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [_shard_path(folder, k) for k in range(len(bounds))]
    futures = {}
    for k, (path, (lo, hi)) in enumerate(zip(paths, bounds, strict=True)):
        if _shard_count(path) == hi - lo:
            continue
        futures[k] = client.submit(
            _label_shard,
            teacher,
            teacher_options,
            items[lo:hi],
            str(path),
            batch_size,
            durable,
            dict(label_kwargs),
            key=f"label-shard-{k:04d}-{os.getpid()}-{time.time_ns()}",
            pure=False,
        )
    before = sum(_shard_count(p) for p in paths)
    with progress_bar(console, enabled=progress) as bar:
        done_frames = lambda: start + sum(_shard_count(p) for p in paths)  # noqa: E731
        task = bar.add_task(
            f"labelling ({teacher}, {len(futures)} shards on {n_workers(client)} workers)",
            total=n_frames,
            completed=done_frames(),
        )
        try:
            pending = dict(futures)
            while pending:
                time.sleep(_POLL_S)
                for k in [k for k, f in pending.items() if f.done()]:
                    future = pending.pop(k)
                    try:
                        future.result()  # a worker's exception surfaces here
                    except Exception as error:
                        lo, hi = bounds[k]
                        where = f"shard {k} (input frames {lo}..{hi - 1}, {paths[k]})"
                        if isinstance(error, ValueError):  # bad frame or labels: named
                            raise ValueError(f"{where}: {error}") from error
                        raise RuntimeError(
                            f"{where}: {type(error).__name__}: {error}; rerun to resume"
                        ) from error
                bar.update(task, completed=done_frames())
        except BaseException:
            client.cancel(list(futures.values()))
            raise
        bar.update(task, completed=done_frames())
    # Counted from the files: frames a killed attempt committed count, none twice.
    return sum(_shard_count(p) for p in paths) - before
