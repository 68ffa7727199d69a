"""The training loop: label store in, trained student out; resumable and reproducible.

Layout of a run (``output_dir`` is the student directory that ``load_student`` reads)::

    output_dir/
      student.json, params/      the exported student (best-validation EMA parameters)
      training/
        config.yaml              the resolved TrainConfig
        metrics.jsonl            one JSON line per validation (train + validation errors)
        summary.json             the training summary (also in student.metadata)
        checkpoints/<step>/      Orbax checkpoints (the last two)

Everything a run computes is a function of the config and the data: the split comes
from ``split_seed``, the initial parameters and the batch order from ``seed`` (batch
``t`` is a pure function of ``(seed, t)``), and a resumed run restores the complete
state of the last checkpoint, so it continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from ase.data import atomic_numbers, chemical_symbols
from rich.console import Console
from rich.markup import escape

from jaxdistill.config.train import RESUMABLE_KEYS, TrainConfig, resolve_config
from jaxdistill.data.arrays import LabelArrays, usable_frames
from jaxdistill.data.batching import (
    Batch,
    CapacityPlan,
    make_batch,
    plan_capacity,
    precompute_neighbours,
    shard_indices,
)
from jaxdistill.data.store import LabelStore
from jaxdistill.models import build_model
from jaxdistill.potential import make_potential
from jaxdistill.progress import progress_bar
from jaxdistill.student import CONFIG_FILE, PARAMS_DIR, Student, create_student, load_student
from jaxdistill.train.checkpoint import RunCheckpoints
from jaxdistill.train.loss import LossWeights, disagreement_weights, metrics_from_sums
from jaxdistill.train.optimizer import make_optimizer, make_schedule
from jaxdistill.train.reference import (
    HeadStatistics,
    apply_head_statistics,
    fit_head_statistics,
)
from jaxdistill.train.step import (
    init_state,
    local_shards,
    make_eval_step,
    make_mesh,
    make_train_step,
    put_replicated,
    put_sharded,
)

RUN_DIR = "training"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_YAML = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
BEST_METRIC = "force_mae_meV_per_A"


class BatchOrder:
    """Which training frames form batch ``t``: a pure function of ``(seed, t)``.

    The frames are visited epoch after epoch, each epoch in a fresh permutation from
    ``numpy.random.default_rng([seed, epoch])``; batch ``t`` takes positions
    ``t*B .. t*B+B-1`` of that endless sequence, so every batch is full and a resumed
    run needs only the step to continue the same order.
    """

    def __init__(self, n_frames: int, batch_size: int, seed: int) -> None:
        if n_frames < 1:
            raise ValueError("no training frames")
        self.n_frames, self.batch_size, self.seed = int(n_frames), int(batch_size), int(seed)
        self._cache: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            if len(self._cache) > 4:
                self._cache.pop(min(self._cache))
            rng = np.random.default_rng([self.seed, epoch])
            self._cache[epoch] = rng.permutation(self.n_frames)
        return self._cache[epoch]

    def indices(self, step: int) -> np.ndarray:
        """Frame positions (0 .. n_frames-1) of batch ``step``."""
        positions = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
        epochs, within = np.divmod(positions, self.n_frames)
        return np.array(
            [self._permutation(int(e))[w] for e, w in zip(epochs, within, strict=True)],
            dtype=np.int64,
        )

    def epoch(self, step: int) -> float:
        """Epochs completed after ``step`` steps."""
        return step * self.batch_size / self.n_frames


@dataclass
class EarlyStopping:
    """Tracks the best validation metric (lower is better) and the patience left.

    Attributes:
        patience: validations without improvement before stopping (None: never stop).
        metric: best value so far (None before the first validation).
        step: step of the best value (-1 before the first validation).
        bad_validations: validations since the last improvement.
    """

    patience: int | None
    metric: float | None = None
    step: int = -1
    bad_validations: int = 0

    def update(self, step: int, value: float) -> bool:
        """Record a validation; True when it is a new best."""
        if self.metric is None or value < self.metric:
            self.metric, self.step, self.bad_validations = float(value), int(step), 0
            return True
        self.bad_validations += 1
        return False

    @property
    def should_stop(self) -> bool:
        """Whether patience has run out."""
        return self.patience is not None and self.bad_validations >= self.patience

    def to_dict(self) -> dict[str, Any]:
        """JSON form (for checkpoints)."""
        return {"metric": self.metric, "step": self.step, "bad_validations": self.bad_validations}

    @classmethod
    def from_dict(cls, patience: int | None, values: Mapping[str, Any]) -> EarlyStopping:
        """Inverse of :meth:`to_dict`."""
        return cls(
            patience, values.get("metric"), int(values["step"]), int(values["bad_validations"])
        )


# Config keys that change the compiled training step.
STEP_KEYS = frozenset(
    {
        "steps", "learning_rate", "final_learning_rate", "schedule", "warmup_fraction",
        "optimizer", "weight_decay", "grad_clip_norm", "ema_decay", "energy_weight",
        "forces_weight", "stress_weight", "hessian_weight",
    }
)  # fmt: skip


def student_key(student: Student) -> dict[str, Any]:
    """What determines a student's functions (not its parameter values)."""
    return {
        "architecture": student.architecture,
        "species": list(student.species),
        "cutoff": student.cutoff,
        "hyperparameters": student.hyperparameters,
    }


@functools.lru_cache(maxsize=4)
def _step_functions(
    model_key: str, config_key: str, device_ids: tuple[int, ...], hessian: bool = False
):
    """Optimizer and jitted train/eval steps, shared by runs with the same model and
    optimisation settings in one process (so a resumed or repeated run does not compile
    again). With ``hessian``, the train step takes a Hessian batch too."""
    model = json.loads(model_key)
    module = build_model(
        model["architecture"], model["species"], model["cutoff"], **model["hyperparameters"]
    )
    potential = make_potential(module.apply)
    predict = potential.predict
    hvp = potential.hessian_vector_product if hessian else None
    config = TrainConfig.from_dict(json.loads(config_key))
    devices = {d.id: d for d in jax.devices()}
    mesh = make_mesh([devices[i] for i in device_ids])
    optimizer = make_optimizer(config)
    weights = LossWeights(
        config.energy_weight,
        config.forces_weight,
        config.stress_weight,
        config.effective_hessian_weight if hessian else 0.0,
    )
    train_step = make_train_step(predict, optimizer, weights, config.ema_decay, mesh, hvp)
    eval_step = make_eval_step(predict, weights, mesh, hvp)
    return optimizer, train_step, eval_step


def _open_store(store: LabelStore | str | Path) -> tuple[LabelStore, bool]:
    if isinstance(store, LabelStore):
        return store, False
    return LabelStore(store), True


def store_fingerprint(store: LabelStore) -> dict[str, Any]:
    """What identifies the data of a run: frame count, input fingerprint, teacher."""
    teacher = store.teacher
    return {
        "n_frames": len(store),
        "n_atoms": store.n_atoms_total,
        "input_fingerprint": store.input_info.get("fingerprint"),
        "teacher": teacher.get("name"),
        "teacher_weights_sha256": teacher.get("weights_sha256"),
    }


def _indices_hash(indices: np.ndarray) -> str:
    return hashlib.blake2b(np.asarray(indices, np.int64).tobytes(), digest_size=8).hexdigest()


class _Prefetcher:
    """Builds and transfers the batches of upcoming steps in background threads.

    Batch ``t`` is a pure function of ``t``, so several threads may build upcoming
    batches at once (numpy's copies release the GIL); they are handed out in step order.
    """

    def __init__(self, make, steps: Iterator[int], depth: int = 3, threads: int = 1) -> None:
        self._make = make
        self._steps = steps
        self._pool = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="jaxdistill-batches"
        )
        depth = max(depth, 2 * threads)
        self._queue: deque = deque()
        for _ in range(depth):
            self._submit()

    def _submit(self) -> None:
        step = next(self._steps, None)
        if step is not None:
            self._queue.append(self._pool.submit(self._make, step))

    def get(self) -> Any:
        batch = self._queue.popleft().result()
        self._submit()
        return batch

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _batch_threads(mesh) -> int:
    """Threads building batches: one on CPU devices (the cores compute the steps); on
    accelerators, one per device and one more, so that the host keeps up with several
    GPUs (one thread built ~10⁴ 64-atom structures/s on this project's 2-core CPU)."""
    if mesh.devices.flat[0].platform == "cpu":
        return 1
    return max(1, min(mesh.devices.size + 1, (os.cpu_count() or 2) - 1))


def export_student(student: Student, output_dir: Path) -> Path:
    """Write the student files into ``output_dir`` without touching other files there.

    ``student.json`` is removed first and written last, so an interrupted export leaves
    a directory that ``load_student`` refuses rather than a mixed one.
    """
    output_dir = Path(output_dir).absolute()
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = output_dir / ".export"
    shutil.rmtree(staging, ignore_errors=True)
    student.save(staging)
    (output_dir / CONFIG_FILE).unlink(missing_ok=True)
    shutil.rmtree(output_dir / PARAMS_DIR, ignore_errors=True)
    (staging / PARAMS_DIR).rename(output_dir / PARAMS_DIR)
    (staging / CONFIG_FILE).rename(output_dir / CONFIG_FILE)
    shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def _add_sums(total: dict[str, float], sums: Mapping[str, Any]) -> None:
    for key, value in sums.items():
        total[key] = total.get(key, 0.0) + float(value)


def _train_metrics(window: dict[str, float], steps: int) -> dict[str, float]:
    if not steps:
        return {}
    out = metrics_from_sums(window)
    for key in ("loss", "energy_loss", "forces_loss", "stress_loss", "hessian_loss", "grad_norm"):
        if key in window:
            out[key] = window[key] / steps
    return out


def train(
    store: LabelStore | str | Path,
    output_dir: str | Path,
    config: TrainConfig | Mapping[str, Any] | str | Path | None = None,
    student: Student | None = None,
    max_steps: int | None = None,
    *,
    extra_training: Sequence[LabelStore | str | Path] = (),
    export: str = "best",
    stop_after: int | None = None,
    resume: bool = True,
    devices: Sequence[jax.Device] | None = None,
    progress: bool = True,
    console: Any | None = None,
    skip_bad_frames: bool = False,
) -> Student:
    """Train a student on a label store and write it to ``output_dir``.

    Args:
        store: the label store (path or open :class:`LabelStore`).
        output_dir: the student directory to write (training files go to
            ``output_dir/training``).
        config: a :class:`TrainConfig`, a dict of its keys, a YAML path, or None for
            the defaults.
        student: an initial student (fine-tuning); by default a new one is created
            from the config with the store's elements. A given student keeps its
            architecture, cutoff and parameters (the config's ``architecture``,
            ``model`` and ``cutoff_angstrom`` are then not used); its reference
            energies are fitted unless its metadata already holds fitted ones.
        max_steps: override ``config.steps`` (the schedule is fitted to it).
        extra_training: more label stores whose frames are all added to the training
            split (e.g. active-learning rounds); the main store's split, and so its
            validation and test frames, stay as they are.
        export: which parameters the student gets: "best" (the EMA parameters at the
            lowest validation force MAE, the step-0 ones included) or "last" (the final
            EMA parameters). Fine-tuning on frames unlike the validation split wants
            "last": "best" may hand back the unchanged starting student.
        stop_after: stop (checkpoint and export) once this many steps are done,
            without changing the schedule: a later call with the same config resumes
            and ends exactly where an uninterrupted run would.
        resume: continue from the last checkpoint in ``output_dir`` when there is one
            (its config and data must match); False starts afresh, deleting it.
        devices: devices for data parallelism (default: all local devices).
        progress: show a rich progress bar.
        console: a ``rich.console.Console`` for the progress bar (default: stderr).
        skip_bad_frames: leave out frames with non-finite (or absurdly large)
            positions, cell, energy or forces instead of refusing the store (see
            :func:`~jaxdistill.data.arrays.bad_frames`); each is named.

    Returns:
        The trained student (also saved in ``output_dir``).
    """
    config = resolve_config(config)
    if export not in ("best", "last"):
        raise ValueError(f"export must be 'best' or 'last', got {export!r}")
    if max_steps is not None:
        config = config.replace(steps=int(max_steps))
    output_dir = Path(output_dir).absolute()
    run_dir = output_dir / RUN_DIR
    store, opened = _open_store(store)
    extras = [_open_store(extra) for extra in extra_training]
    try:
        return _train(
            store, [e for e, _ in extras], output_dir, run_dir, config, student, stop_after,
            resume, devices, progress, console, export, skip_bad_frames,
        )  # fmt: skip
    finally:
        if opened:
            store.close()
        for extra, extra_opened in extras:
            if extra_opened:
                extra.close()


def _prepare_student(
    config: TrainConfig, student: Student | None, species: Sequence[int]
) -> tuple[Student, bool]:
    """The initial student and whether its head statistics must be fitted."""
    if student is None:
        student = create_student(
            config.architecture,
            species,
            cutoff=config.cutoff_angstrom,
            seed=config.seed,
            dtype=config.dtype,
            **config.model,
        )
        return student, config.fit_reference_energies
    missing = sorted(set(species) - set(student.species))
    if missing:
        names = ", ".join(chemical_symbols[z] for z in missing)
        raise ValueError(f"the data contain element(s) {names} unknown to the given student")
    if student.dtype != config.dtype:
        student = student.with_dtype(config.dtype)
    fitted = "reference_energies_eV" in student.metadata.get("head_statistics", {})
    return student, config.fit_reference_energies and not fitted


def _train(
    store: LabelStore,
    extras: Sequence[LabelStore],
    output_dir: Path,
    run_dir: Path,
    config: TrainConfig,
    initial_student: Student | None,
    stop_after: int | None,
    resume: bool,
    devices: Sequence[jax.Device] | None,
    progress: bool,
    console: Any | None,
    export: str = "best",
    skip_bad_frames: bool = False,
) -> Student:
    started = time.perf_counter()
    split = store.split(config.split, seed=config.split_seed)
    train_idx = split["train"]
    val_idx = split.get("validation", np.zeros(0, np.int64))
    if len(train_idx) == 0:
        raise ValueError(f"the store {store.path} has no training frames ({len(store)} frames)")
    train_labels = LabelArrays.concatenate(
        [store.arrays(train_idx), *(extra.arrays() for extra in extras)]
    )
    val_labels = store.arrays(val_idx) if len(val_idx) else None

    def report(message: str) -> None:
        (console or Console(stderr=True)).print(f"[yellow]{escape(message)}[/]", soft_wrap=True)

    train_labels = usable_frames(
        train_labels, f"the training frames of {store.path}", skip_bad_frames, report
    )
    if val_labels is not None:
        val_labels = usable_frames(
            val_labels, f"the validation frames of {store.path}", skip_bad_frames, report
        )
        if val_labels.n_frames == 0:
            val_labels = None
    if train_labels.n_frames == 0:
        raise ValueError(f"no usable training frames in {store.path}")
    species = sorted(
        {atomic_numbers[symbol] for s in (store, *extras) for symbol in s.element_counts()}
    )

    # Resume bookkeeping first: a finished run with the same config and data returns at
    # once (the pipeline calls train again on every rerun).
    fingerprint = store_fingerprint(store)
    fingerprint["train_indices"] = _indices_hash(train_idx)
    if extras:
        fingerprint["extra_training"] = [store_fingerprint(extra) for extra in extras]
    checkpoints_dir = run_dir / CHECKPOINT_DIR
    metrics_path = run_dir / METRICS_FILE
    # Several processes (jax.distributed, one per host): process 0 writes the files;
    # checkpoints are collective (Orbax).
    main_process = jax.process_index() == 0
    if not resume and main_process:
        shutil.rmtree(checkpoints_dir, ignore_errors=True)
        metrics_path.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    _sync_processes("jaxdistill-train-start")
    checkpoints = RunCheckpoints(checkpoints_dir)
    latest = checkpoints.latest_step()
    saved_meta = checkpoints.restore_meta(latest) if latest is not None else None
    if saved_meta is not None:
        _check_resume(saved_meta, config, fingerprint, checkpoints_dir)
        if saved_meta.get("finished") and (output_dir / CONFIG_FILE).is_file():
            checkpoints.close()
            return load_student(output_dir)

    student, fit_head = _prepare_student(config, initial_student, species)
    dtype = np.dtype(student.dtype)
    stats: HeadStatistics | None = None
    params = student.params
    frame_weights = disagreement_weights(train_labels, config.force_disagreement_limit)
    if fit_head:
        # Reference energies only from frames whose energies are trained on.
        trusted = train_labels
        if frame_weights is not None:
            trusted = train_labels.subset(np.flatnonzero(frame_weights[:, 0] > 0))
        stats = fit_head_statistics(trusted, student.species)
        params = apply_head_statistics(params, stats)

    # Data: neighbours once per frame, one capacity plan for training and validation.
    train_frames = dataclasses.replace(
        precompute_neighbours(train_labels, student.cutoff), frame_weights=frame_weights
    )
    val_frames = precompute_neighbours(val_labels, student.cutoff) if val_labels else None
    mesh = make_mesh(devices)
    n_shards = mesh.devices.size
    mine = local_shards(mesh)  # the shards this process builds (all in one process)
    per_shard = -(-config.batch_size // n_shards)
    # Hessian labels: a small batch of their own per step (see TrainConfig).
    hessian_rows = np.flatnonzero(train_labels.has_hessian)
    use_hessian = len(hessian_rows) > 0 and config.effective_hessian_weight > 0
    all_frames = [f for f in (train_frames, val_frames) if f is not None]
    plan = plan_capacity(
        all_frames, per_shard, config.capacity, receiver_major=config.receiver_major
    )
    # Validation of Hessian labels is a forward-mode product: edge lists there.
    val_plan = (
        plan_capacity(all_frames, per_shard, config.capacity)
        if use_hessian and config.receiver_major
        else plan
    )
    order = BatchOrder(train_frames.n_frames, config.batch_size, config.seed)
    hessian_order = hessian_plan = None
    if use_hessian:
        hessian_size = config.effective_hessian_batch_size
        hessian_per_shard = -(-hessian_size // n_shards)
        hessian_size = hessian_per_shard * n_shards
        hessian_order = BatchOrder(len(hessian_rows), hessian_size, config.seed + 1)
        hessian_plan = plan_capacity(
            [train_frames], hessian_per_shard, config.capacity, rows=hessian_rows
        )

    schedule = make_schedule(config)
    optimizer, train_step, eval_step = _step_functions(
        json.dumps(student_key(student), sort_keys=True),
        json.dumps({k: v for k, v in config.to_dict().items() if k in STEP_KEYS}, sort_keys=True),
        tuple(int(d.id) for d in mesh.devices.flat),
        use_hessian,
    )
    state = init_state(params, optimizer)
    best_params = _copy_tree(state.ema_params)
    best = EarlyStopping(config.patience)

    # Resume.
    meta: dict[str, Any] = {"window": {}, "window_steps": 0, "finished": False}
    start_step = 0
    if latest is not None:
        tree, meta = checkpoints.restore(latest, {"state": state, "best_params": best_params})
        state, best_params = tree["state"], tree["best_params"]
        best = EarlyStopping.from_dict(config.patience, meta["best"])
        start_step = int(state.step)
    if main_process:
        _truncate_metrics(metrics_path, start_step)
        config.to_yaml(run_dir / CONFIG_YAML)
    state = put_replicated(state, mesh)
    best_params = put_replicated(best_params, mesh)

    val_batches: list[Batch] = []
    if val_frames is not None:
        chunk = per_shard * n_shards
        for lo in range(0, val_frames.n_frames, chunk):
            shards = shard_indices(np.arange(lo, min(lo + chunk, val_frames.n_frames)), n_shards)
            # Validation frames with Hessian labels are checked along their first direction.
            choice = [np.zeros(len(shards[i]), np.int64) for i in mine] if use_hessian else None
            val_batches.append(
                make_batch(
                    val_frames,
                    [shards[i] for i in mine],
                    val_plan.capacity(val_frames, shards),  # every process: same shapes
                    dtype,
                    hessian_choice=choice,
                )
            )

    def validate(params) -> dict[str, float]:
        total: dict[str, float] = {}
        for batch in val_batches:
            _add_sums(total, jax.device_get(eval_step(params, put_sharded(batch, mesh))))
        metrics = metrics_from_sums(total)
        metrics["loss"] = total.get("loss", math.nan) / max(len(val_batches), 1)
        return metrics

    def host_batch(step: int) -> tuple[Batch, ...]:
        # Every process draws the whole batch (a pure function of seed and step) and
        # sizes it alike, but builds only the shards of its own devices.
        shards = shard_indices(order.indices(step), n_shards)
        capacity = plan.capacity(train_frames, shards)
        batch = make_batch(train_frames, [shards[i] for i in mine], capacity, dtype)
        if not use_hessian:
            return put_sharded((batch,), mesh)
        # Which frames and which of their directions: a pure function of (seed, step).
        frames = shard_indices(hessian_rows[hessian_order.indices(step)], n_shards)
        rng = np.random.default_rng([config.seed, step, 2])
        choice = [rng.integers(train_labels.hessian_k, size=len(f)) for f in frames]
        hessian_batch = make_batch(
            train_frames,
            [frames[i] for i in mine],
            hessian_plan.capacity(train_frames, frames),
            dtype,
            hessian_choice=[choice[i] for i in mine],
        )
        return put_sharded((batch, hessian_batch), mesh)

    end_step = config.steps if stop_after is None else min(config.steps, int(stop_after))
    window: dict[str, float] = {k: float(v) for k, v in meta.get("window", {}).items()}
    window_steps = int(meta.get("window_steps", 0))
    pending: list[dict[str, Any]] = []
    finished = bool(meta.get("finished", False))
    early_stopped = bool(meta.get("early_stopped", False))
    last_validation: dict[str, float] = dict(meta.get("last_validation", {}))
    trained_seconds = float(meta.get("trained_seconds", 0.0))

    def flush_pending() -> None:
        nonlocal window_steps
        for sums in jax.device_get(pending):
            _add_sums(window, sums)
            window_steps += 1
        pending.clear()

    def run_meta(step: int) -> dict[str, Any]:
        out = {
            "config": config.to_dict(),
            "data": fingerprint,
            "step": step,
            "window": window,
            "window_steps": window_steps,
            "finished": finished,
            "early_stopped": early_stopped,
            "last_validation": last_validation,
            "best": best.to_dict(),
            "trained_seconds": trained_seconds + (time.perf_counter() - loop_started),
        }
        return out

    saved_steps: set[int] = set()

    def save_checkpoint(step: int) -> None:
        flush_pending()
        checkpoints.save(step, {"state": state, "best_params": best_params}, run_meta(step))
        saved_steps.add(step)

    def record_validation(step: int) -> bool:
        """Validate the EMA parameters, log a metrics line; True when patience ran out."""
        nonlocal best_params, window, window_steps, last_validation
        flush_pending()
        line: dict[str, Any] = {
            "step": step,
            "epoch": round(order.epoch(step), 4),
            "time_s": round(trained_seconds + time.perf_counter() - loop_started, 3),
            "learning_rate": float(schedule(max(step - 1, 0))),
        }
        if window_steps:
            line["train"] = _train_metrics(window, window_steps)
        window, window_steps = {}, 0
        stop = False
        if val_batches:
            metrics = validate(state.ema_params)
            line["validation"] = metrics
            last_validation = metrics
            if best.update(step, metrics.get(BEST_METRIC, math.inf)):
                best_params = _copy_tree(state.ema_params)
            line["best_step"] = best.step
            line[f"best_validation_{BEST_METRIC}"] = best.metric
            stop = best.should_stop
        if main_process:
            with metrics_path.open("a") as handle:
                handle.write(json.dumps(line) + "\n")
        return stop

    loop_started = time.perf_counter()
    step = start_step
    steps_run = 0
    info = ""
    with progress_bar(console, enabled=progress and main_process, info=True) as bar:
        task = bar.add_task("training", total=config.steps, completed=step, info="")
        if step == 0 and not finished:
            record_validation(0)
            info = _info_text(last_validation, None)
            bar.update(task, info=info)
        if not finished and step < end_step:
            prefetcher = _Prefetcher(
                host_batch, iter(range(step, end_step)), threads=_batch_threads(mesh)
            )
            try:
                while step < end_step:
                    state, sums = train_step(state, *prefetcher.get())
                    pending.append(sums)
                    step += 1
                    steps_run += 1
                    stop = False
                    if step % config.validation_interval == 0 or step == config.steps:
                        stop = record_validation(step)
                    if step % config.log_interval == 0 or stop or step == end_step:
                        flush_pending()
                        running = _train_metrics(window, window_steps) if window_steps else {}
                        info = _info_text(last_validation, running or None)
                        bar.update(task, completed=step, info=info)
                    if stop:
                        early_stopped = True
                        finished = True
                        break
                    if step == config.steps:
                        finished = True
                    if step % config.checkpoint_interval == 0 and not finished:
                        save_checkpoint(step)
            finally:
                prefetcher.close()
        loop_seconds = time.perf_counter() - loop_started
        if (steps_run or latest is None) and step not in saved_steps:
            save_checkpoint(step)
        trained_seconds += loop_seconds
    checkpoints.close()

    # Export: the best-validation EMA parameters (the last EMA ones without validation).
    host_state = jax.device_get(state)
    use_best = export == "best" and bool(val_batches) and best.step >= 0
    export_params = jax.device_get(best_params) if use_best else host_state.ema_params
    summary = {
        "steps_completed": int(host_state.step),
        "steps": config.steps,
        "finished": finished,
        "early_stopped": early_stopped,
        "exported": "best_validation_ema" if use_best else "last_ema",
        "best_step": best.step if use_best else None,
        f"best_validation_{BEST_METRIC}": best.metric if use_best else None,
        "last_validation": last_validation,
        "train_seconds": round(trained_seconds, 3),
        "wall_seconds_this_call": round(time.perf_counter() - started, 3),
        "structures_per_second_this_call": (
            round(steps_run * config.batch_size / loop_seconds, 3) if steps_run else None
        ),
        "devices": [str(d) for d in mesh.devices.flat],
        "capacity": _plan_summary(plan),
        "epochs": round(order.epoch(int(host_state.step)), 4),
    }
    split_info = {
        "fractions": dict(config.split),
        "seed": config.split_seed,
        "sizes": {name: len(idx) for name, idx in split.items()},
        "extra_training_frames": sum(len(extra) for extra in extras),
        "forces_only_frames": 0 if frame_weights is None else int((frame_weights[:, 0] == 0).sum()),
        "hessian_frames": len(hessian_rows),
        "hessian_weight": config.effective_hessian_weight if use_hessian else 0.0,
        "store": str(Path(store.path).absolute()),
        **{k: v for k, v in fingerprint.items() if k != "train_indices"},
    }
    metadata = dict(student.metadata)
    metadata["teacher"] = store.teacher
    metadata["split"] = split_info
    if stats is not None:
        metadata["head_statistics"] = stats.as_metadata()
    metadata["training"] = {"config": config.to_dict(), **summary}
    trained = Student(
        student.architecture,
        student.species,
        student.cutoff,
        dict(student.hyperparameters),
        jax.tree_util.tree_map(np.asarray, export_params),
        student.dtype,
        metadata,
    )
    if main_process:
        export_student(trained, output_dir)
        (run_dir / SUMMARY_FILE).write_text(json.dumps(metadata["training"], indent=2) + "\n")
    _sync_processes("jaxdistill-train-exported")
    return trained


def _sync_processes(name: str) -> None:
    """Wait for every process of a multi-process run (nothing in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _copy_tree(tree: Any) -> Any:
    """Fresh device buffers (the train step donates the state's buffers)."""
    return jax.tree_util.tree_map(lambda x: jax.numpy.array(x, copy=True), tree)


def _plan_summary(plan: CapacityPlan) -> dict[str, Any]:
    out: dict[str, Any] = {"mode": plan.mode, "graphs_per_shard": plan.graphs - 1}
    if plan.slots is not None:
        out["slots_per_atom"] = plan.slots
    if plan.fixed is not None:
        out.update(nodes=plan.fixed.nodes, edges=plan.fixed.edges, fill=round(plan.fill, 3))
    return out


def _info_text(validation: Mapping[str, float], train: Mapping[str, float] | None) -> str:
    parts = []
    if train:
        parts.append(f"loss {train.get('loss', math.nan):.3g}")
        parts.append(f"F {train.get('force_mae_meV_per_A', math.nan):.1f}")
    if validation:
        parts.append(f"val F {validation.get('force_mae_meV_per_A', math.nan):.1f} meV/Å")
        parts.append(f"E {validation.get('energy_mae_meV_per_atom', math.nan):.2f} meV/atom")
    return "  ".join(parts)


def _check_resume(
    saved: Mapping[str, Any], config: TrainConfig, fingerprint: Mapping[str, Any], where: Path
) -> None:
    old = {k: v for k, v in saved.get("config", {}).items() if k not in RESUMABLE_KEYS}
    new = {k: v for k, v in config.to_dict().items() if k not in RESUMABLE_KEYS}
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    problems = [f"config {k}: checkpoint {old.get(k)!r}, now {new.get(k)!r}" for k in changed]
    data = saved.get("data", {})
    problems += [
        f"data {k}: checkpoint {data.get(k)!r}, now {fingerprint.get(k)!r}"
        for k in sorted(set(data) | set(fingerprint))
        if data.get(k) != fingerprint.get(k)
    ]
    if problems:
        raise ValueError(
            f"cannot resume from {where}: the run there differs from this one:\n  "
            + "\n  ".join(problems)
            + "\nUse another output directory, or start afresh with --restart "
            "(resume=False in Python), which deletes the checkpoints there."
        )


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep only metrics lines up to ``step`` (written before the checkpoint resumed)."""
    if not path.exists():
        return
    if step == 0:
        path.unlink()
        return
    kept = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            if json.loads(line).get("step", math.inf) <= step:
                kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))


__all__ = ["BatchOrder", "EarlyStopping", "export_student", "store_fingerprint", "train"]
