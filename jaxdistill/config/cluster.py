"""The ``cluster:`` section: where teacher work (MD trajectories, labelling) fans out.

Three kinds of Dask cluster, chosen by the keys given (docs/cluster.md):

- **local** (default): worker processes on this machine, one per GPU, each pinned to
  its GPU through ``CUDA_VISIBLE_DEVICES``; on a machine without GPUs, ``workers`` CPU
  worker processes. ``workers: N`` with GPUs puts N workers on them in turn (several
  small-system teachers can share one GPU).
- **scheduler** (``address: tcp://host:8786``): a running Dask scheduler whose workers
  were started by the user (``dask worker ...``; pinning is then theirs).
- **slurm** (``slurm: {...}``): ``dask_jobqueue.SLURMCluster(**slurm)`` scaled to
  ``jobs`` jobs (dask-jobqueue is not a dependency; it is imported when asked for).

Imports no dask: reading and checking a config stays cheap.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxdistill.config.keys import check_keys, read_yaml

__all__ = ["ClusterConfig"]

_ADDRESS = re.compile(r"^(tcp|tls|inproc|ucx|ws|wss)://\S+$")


@dataclass(frozen=True)
class ClusterConfig:
    """Where teacher work runs: a local Dask cluster, a scheduler, or SLURM jobs.

    Attributes:
        workers: local: worker processes (None: one per GPU; without GPUs,
            ``min(cores, 8)``). With GPUs, workers are given the GPUs in turn.
        gpus: local: the GPUs to use (indices or UUIDs as ``CUDA_VISIBLE_DEVICES``
            takes them; None: every visible GPU; ``[]``: CPU workers only).
        threads_per_worker: CPU threads of each worker's teacher (torch, XLA);
            default: the cores divided among the local workers (at least 1), or
            ``JAXDISTILL_THREADS``. Each worker runs one task at a time whatever this is.
        address: a running Dask scheduler (``tcp://host:8786``) to connect to instead
            of starting one.
        slurm: keyword arguments of ``dask_jobqueue.SLURMCluster`` (``cores``,
            ``memory``, ``walltime``, ``job_extra_directives`` ...): start SLURM jobs.
        jobs: SLURM jobs to start (``SLURMCluster.scale(jobs=...)``).
        dashboard_address: the local or SLURM scheduler's dashboard (``":8787"``; a
            busy port gives a random one; None for none). Needs bokeh installed.
        shards: labelling: how many HDF5 shards the frames are split into (default:
            four per worker, so a slow or killed worker delays little).
    """

    workers: int | None = None
    gpus: tuple[str, ...] | None = None
    threads_per_worker: int | None = None
    address: str | None = None
    slurm: Mapping[str, Any] | None = None
    jobs: int = 1
    dashboard_address: str | None = ":8787"
    shards: int | None = None

    def __post_init__(self) -> None:
        if self.address is not None and self.slurm is not None:
            raise ValueError("cluster: give either 'address' (a running scheduler) or 'slurm'")
        if self.kind != "local":
            local = [k for k in ("workers", "gpus", "threads_per_worker") if getattr(self, k)]
            if local:
                raise ValueError(
                    f"cluster: {', '.join(local)} only apply to a local cluster, not with "
                    f"'{'address' if self.address else 'slurm'}' (configure the workers there)"
                )
        for key in ("workers", "threads_per_worker", "shards"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or int(value) < 1):
                raise ValueError(f"cluster: {key} must be an integer >= 1, got {value!r}")
        if int(self.jobs) < 1:
            raise ValueError(f"cluster: jobs must be >= 1, got {self.jobs!r}")
        if self.address is not None and not _ADDRESS.match(str(self.address)):
            raise ValueError(
                f"cluster: address must look like tcp://host:8786, got {self.address!r}"
            )
        if self.slurm is not None and not isinstance(self.slurm, Mapping):
            raise ValueError("cluster: slurm must be a mapping of SLURMCluster keyword arguments")

    @property
    def kind(self) -> str:
        """``"local"``, ``"scheduler"`` or ``"slurm"``."""
        if self.address is not None:
            return "scheduler"
        if self.slurm is not None:
            return "slurm"
        return "local"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ClusterConfig:
        """Build from the parsed ``cluster:`` mapping (unknown keys raise ValueError)."""
        if data is None:
            return cls()
        check_keys(cls, data, "cluster")
        values = dict(data)
        if values.get("gpus") is not None:
            gpus = values["gpus"]
            if isinstance(gpus, str | int):
                gpus = [g for g in str(gpus).split(",") if g.strip()]
            values["gpus"] = tuple(str(g).strip() for g in gpus)
        if values.get("slurm") is not None and isinstance(values["slurm"], Mapping):
            values["slurm"] = dict(values["slurm"])
        return cls(**values)

    @classmethod
    def from_option(cls, text: str) -> ClusterConfig:
        """Parse a ``--cluster`` value: ``local``, ``local:N`` (N workers), a scheduler
        address (``tcp://host:8786``) or a YAML file holding a ``cluster:`` mapping (or
        the mapping itself), e.g. for SLURM."""
        text = text.strip()
        if text == "local":
            return cls()
        if text.startswith("local:"):
            count = text.partition(":")[2]
            if not count.isdigit() or int(count) < 1:
                raise ValueError(f"--cluster local:N needs a worker count >= 1, got {text!r}")
            return cls(workers=int(count))
        if "://" in text:
            return cls(address=text)
        path = Path(text)
        if path.suffix in (".yaml", ".yml") or path.is_file():
            data = read_yaml(path, "cluster config")
            if isinstance(data, Mapping) and "cluster" in data:
                data = data["cluster"]
            if not isinstance(data, Mapping):
                raise ValueError(f"cluster config {path} must hold a 'cluster:' mapping")
            return cls.from_dict(data)
        raise ValueError(
            f"--cluster {text!r}: expected local, local:N, a scheduler address "
            "(tcp://host:8786) or a YAML file with a 'cluster:' mapping"
        )

    def to_dict(self) -> dict[str, Any]:
        """A plain dict that :meth:`from_dict` reads back."""
        out = dataclasses.asdict(self)
        out["gpus"] = list(self.gpus) if self.gpus is not None else None
        out["slurm"] = dict(self.slurm) if self.slurm is not None else None
        return out
