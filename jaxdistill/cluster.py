"""Dask clusters for teacher work: start or join one from a :class:`ClusterConfig`, and
what runs first in every worker task.

One way to fan out: teacher MD trajectories (:func:`jaxdistill.sampling.sample`) and
labelling (:func:`jaxdistill.fanout.label_on_cluster`) both submit tasks to a
``dask.distributed`` client opened by :func:`open_client`. Workers are processes
(``LocalCluster(processes=True)``, one task at a time each): teachers hold the GIL, own
GPU memory and set process-wide torch and XLA state. Teachers are loaded inside the
workers from their spec string (:func:`worker_teacher`, once per worker process), never
pickled.

``dask.distributed`` is imported only inside these functions, so importing this module
(and :mod:`jaxdistill.sampling`) stays cheap.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from jaxdistill import runtime
from jaxdistill.config.cluster import ClusterConfig

if TYPE_CHECKING:
    from distributed import Client

    from jaxdistill.teachers.base import Teacher

__all__ = [
    "ClusterConfig",
    "local_worker_plan",
    "n_workers",
    "open_client",
    "prepare_worker",
    "visible_gpus",
    "worker_teacher",
]

#: Set in a local worker pinned to one GPU (its CUDA_VISIBLE_DEVICES entry).
ENV_WORKER_GPU = "JAXDISTILL_WORKER_GPU"
#: Most CPU worker processes a local cluster starts by default (each holds a teacher).
MAX_DEFAULT_CPU_WORKERS = 8


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries.

    ``CUDA_VISIBLE_DEVICES`` when set (empty or ``-1``: none); else the GPUs
    ``nvidia-smi`` lists; else none. Neither torch nor jax is imported: starting CUDA in
    the parent would hold memory on every GPU for nothing.
    """
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        entries = [e.strip() for e in os.environ["CUDA_VISIBLE_DEVICES"].split(",")]
        out = []
        for entry in entries:
            if not entry or entry.startswith("-"):
                break  # CUDA stops at the first invalid entry
            out.append(entry)
        return out
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        listing = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listing.splitlines() if line.strip().isdigit()]


def local_worker_plan(config: ClusterConfig) -> list[tuple[str, dict[str, str]]]:
    """Name and environment of each worker process of a local cluster.

    One worker per GPU (``config.gpus``, default every visible one), pinned by
    ``CUDA_VISIBLE_DEVICES``; ``config.workers`` workers take the GPUs in turn. Without
    GPUs, ``config.workers`` CPU workers (default ``min(cores, 8)``). Each worker's
    teacher gets ``threads_per_worker`` CPU threads (default: the cores shared out).

    Returns:
        ``[(name, environment), ...]``.
    """
    gpus = list(config.gpus) if config.gpus is not None else visible_gpus()
    cores = runtime.available_cores()
    if gpus:
        count = config.workers or len(gpus)
    else:
        count = config.workers or min(cores, MAX_DEFAULT_CPU_WORKERS)
    threads = config.threads_per_worker
    if threads is None:
        threads = int(os.environ.get(runtime.ENV_THREADS, 0)) or max(1, cores // count)
    plan = []
    for i in range(count):
        env = {
            # Dask's nanny sets OMP_NUM_THREADS=1 before spawning; a CPU teacher wants
            # its share of the cores.
            "OMP_NUM_THREADS": str(threads),
            runtime.ENV_THREADS: str(threads),
            # Several workers may share a GPU: a JAX teacher must not take 75 % of it.
            "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
        }
        if gpus:
            gpu = gpus[i % len(gpus)]
            env["CUDA_VISIBLE_DEVICES"] = gpu
            env[ENV_WORKER_GPU] = gpu
            name = f"gpu{gpu}" if count == len(gpus) else f"gpu{gpu}-{i}"
        else:
            env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU worker stays off any GPU
            name = f"cpu{i}"
        plan.append((name, env))
    return plan


def _start_local(config: ClusterConfig) -> Any:
    from distributed import LocalCluster

    plan = local_worker_plan(config)
    # Start with no workers, then give each its own environment (its GPU): LocalCluster
    # passes one set of worker options to all of them.
    cluster = LocalCluster(
        n_workers=0,
        processes=True,
        threads_per_worker=1,
        dashboard_address=config.dashboard_address,
        host="127.0.0.1",
    )
    try:
        template = cluster.new_spec
        for name, env in plan:
            cluster.worker_spec[name] = {
                "cls": template["cls"],
                "options": {**template["options"], "env": env, "name": name},
            }
        cluster.scale(len(plan))
    except BaseException:
        cluster.close()
        raise
    return cluster


def _start_slurm(config: ClusterConfig) -> Any:
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise ImportError(
            "cluster.slurm needs dask-jobqueue: pip install dask-jobqueue "
            "(docs/cluster.md has an example)"
        ) from None
    options = dict(config.slurm or {})
    options.setdefault("processes", 1)  # one worker process per job (one task at a time)
    if config.dashboard_address is not None:
        options.setdefault("scheduler_options", {"dashboard_address": config.dashboard_address})
    cluster = SLURMCluster(**options)
    cluster.scale(jobs=config.jobs)
    return cluster


def n_workers(client: Client) -> int:
    """Workers the scheduler knows now."""
    return len(client.scheduler_info().get("workers", {}))


def _dashboard(client: Client) -> str:
    import importlib.util

    if "dashboard" not in client.scheduler_info().get("services", {}):
        return "off"
    # Without bokeh the scheduler's HTTP server runs but shows no dashboard.
    hint = "" if importlib.util.find_spec("bokeh") else " (pip install bokeh to see it)"
    return f"{client.dashboard_link}{hint}"


@contextlib.contextmanager
def open_client(
    config: ClusterConfig | Client | None = None,
    console: Any | None = None,
    wait_for: int | None = None,
    timeout_s: float = 600.0,
) -> Iterator[Client]:
    """A Dask client on the cluster ``config`` describes; the cluster it started is
    closed (its workers ended) on exit.

    Args:
        config: the cluster; a ready ``distributed.Client`` is used as it is (and left
            open); None: a local cluster with the defaults.
        console: a ``rich.console.Console`` for the cluster line and dashboard address.
        wait_for: workers to wait for before returning (default: a local cluster's
            all; one for a scheduler or SLURM, whose workers may come later).
        timeout_s: how long to wait for them, s.

    Yields:
        The client.
    """
    from distributed import Client

    if isinstance(config, Client):
        yield config
        return
    config = config if config is not None else ClusterConfig()
    cluster = None
    if config.kind == "local":
        cluster = _start_local(config)
        expected = len(cluster.worker_spec)
    elif config.kind == "slurm":
        cluster = _start_slurm(config)
        expected = 1
    else:
        expected = 1
    try:
        client = Client(cluster) if cluster is not None else Client(config.address)
        try:
            if console is not None:
                where = config.address or type(cluster).__name__
                console.print(f"dask: {where}, waiting for {wait_for or expected} worker(s)")
            client.wait_for_workers(wait_for or expected, timeout=timeout_s)
            if console is not None:
                console.print(
                    f"dask: {n_workers(client)} worker(s); dashboard {_dashboard(client)}"
                )
            yield client
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()


def prepare_worker() -> None:
    """Process settings of a worker, before its teacher starts torch or jax (idempotent):
    thread counts from ``JAXDISTILL_THREADS`` (:func:`jaxdistill.runtime.configure`)
    and no JAX preallocation (several workers may share a GPU)."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    runtime.configure()


_TEACHERS: dict[str, Teacher] = {}


def worker_teacher(spec: str, options: Mapping[str, Any] | None = None) -> Teacher:
    """The teacher ``load_teacher(spec, **options)``, loaded once per process.

    In a local worker pinned to one GPU that GPU is ``cuda`` (``cuda:N`` means the
    N-th of the parent's GPUs, which the worker cannot see), so ``cuda:N`` becomes
    ``cuda`` there.
    """
    from jaxdistill.teachers.registry import load_teacher

    options = dict(options or {})
    if os.environ.get(ENV_WORKER_GPU) and str(options.get("device", "")).startswith("cuda:"):
        options["device"] = "cuda"
    key = repr((spec, sorted((k, repr(v)) for k, v in options.items())))
    if key not in _TEACHERS:
        _TEACHERS[key] = load_teacher(spec, **options)
    return _TEACHERS[key]
