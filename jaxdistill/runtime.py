"""Process settings that must be made before torch and jax start: CPU threads and GPU
determinism.

``jaxdistill`` commands call :func:`configure` first thing; in a notebook or script,
call it before importing torch or running any jax code (later it can only set torch's
thread count, and says so)::

    from jaxdistill import runtime
    runtime.configure()            # or configure(threads=4, deterministic=False)

- **Threads.** torch (a teacher) and XLA (a student on the CPU) each start a thread per
  core. When another process holds a core, every parallel region waits for a thread
  that is not running: on a 2-core machine a SevenNet label took 4-27x longer with one
  other busy process. ``configure`` sets torch's thread count (and OpenMP's) to
  ``threads``: by default one fewer than the cores this process may run on
  (``os.sched_getaffinity``), at least one, so the host's own work and one other
  process do not stall every parallel region; ``JAXDISTILL_THREADS`` overrides. XLA's
  CPU pool follows the affinity; with one thread it is turned off. Measured on this
  project's 2-core machine (benchmarks/threads_contention.py, docs/benchmarks.md):
  torch's default 2 threads 0.17 s a label quiet, 0.68 s with a busy process beside
  it; one thread 0.21 and 0.20 s. Making idle threads sleep (``OMP_WAIT_POLICY=
  PASSIVE``) helped under load but doubled the quiet time, so it is not set. Measured in
  benchmarks/threads_contention.py and docs/benchmarks.md.
- **Determinism.** On a GPU, XLA's scatter-adds (the message passing's sums) use
  atomics, whose order varies from run to run; ``--xla_gpu_deterministic_ops=true``
  makes them deterministic, so a training with the same data, config and seed gives
  the same parameters to the bit (its cost is measured in docs/training.md). On by
  default; ``deterministic=False`` or ``JAXDISTILL_DETERMINISTIC=0`` turns it off.

Every setting is only a default: a variable the user already set is left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass

logger = logging.getLogger("jaxdistill")

ENV_THREADS = "JAXDISTILL_THREADS"
ENV_DETERMINISTIC = "JAXDISTILL_DETERMINISTIC"
DETERMINISTIC_FLAG = "--xla_gpu_deterministic_ops=true"


@dataclass(frozen=True)
class RuntimeSettings:
    """What :func:`configure` decided (and whether XLA could still take it)."""

    threads: int
    deterministic: bool
    xla_flags: str
    xla_started: bool
    torch_threads: int | None


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """One fewer than :func:`available_cores`, at least 1."""
    return max(1, available_cores() - 1)


def _xla_started() -> bool:
    """Whether a jax backend exists already (then XLA_FLAGS no longer apply)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(getattr(xla_bridge, "_backends", {}))
    except Exception:  # private API moved: assume the worst
        return True


def _with_flag(flags: str, flag: str) -> str:
    name = flag.split("=")[0]
    if name in flags:  # the user's own value wins
        return flags
    return f"{flags} {flag}".strip()


def configure(threads: int | None = None, deterministic: bool | None = None) -> RuntimeSettings:
    """Set CPU thread counts and GPU determinism for this process (idempotent).

    Args:
        threads: threads for torch and XLA on the CPU; default ``JAXDISTILL_THREADS``,
            else :func:`default_threads`.
        deterministic: bit-reproducible GPU reductions; default ``JAXDISTILL_DETERMINISTIC``
            ("0" turns it off), else True.

    Returns:
        The settings made.
    """
    if threads is None:
        threads = int(os.environ.get(ENV_THREADS, 0)) or default_threads()
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if deterministic is None:
        deterministic = os.environ.get(ENV_DETERMINISTIC, "1").strip().lower() not in (
            "0",
            "false",
            "no",
        )
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    flags = os.environ.get("XLA_FLAGS", "")
    if threads == 1:
        # XLA's CPU thread pool follows the affinity mask; the one count it can be
        # told is "one" (its Eigen pool off)
        flags = _with_flag(flags, "--xla_cpu_multi_thread_eigen=false")
    if deterministic:
        flags = _with_flag(flags, DETERMINISTIC_FLAG)
    started = _xla_started()
    if started and flags != os.environ.get("XLA_FLAGS", ""):
        logger.warning(
            "jax is already running: XLA thread and determinism settings apply to new "
            "processes only (call jaxdistill.runtime.configure() before using jax)"
        )
    os.environ["XLA_FLAGS"] = flags
    torch_threads = None
    if "torch" in sys.modules:  # imported already: set it directly
        import torch

        torch.set_num_threads(threads)
        torch_threads = threads
    return RuntimeSettings(threads, deterministic, flags, started, torch_threads)


def initialize_processes(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Join a multi-process (multi-host) JAX run: one process per host, started together.

    Call it first thing in every process, before any jax computation; then
    ``jaxdistill.train`` splits each batch over the devices of all processes (each
    process builds the shards of its own devices) and process 0 writes the metrics and
    the exported student (checkpoints are written together). Without arguments JAX
    finds the coordinator under SLURM or Open MPI; elsewhere give all three. On CPUs
    the processes reduce their gradients through gloo.

    Args:
        coordinator_address: ``host:port`` of process 0.
        num_processes: how many processes take part.
        process_id: this one's rank, 0 to ``num_processes - 1``.
    """
    import jax

    with contextlib.suppress(Exception):  # a GPU-only jax may lack the CPU option
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )
