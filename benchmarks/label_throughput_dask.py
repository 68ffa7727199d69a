"""Labelling throughput on Dask: the same frames with 1 worker and with one per GPU.

On a machine with 2 GPUs (one worker per GPU, each pinned by CUDA_VISIBLE_DEVICES):

    python benchmarks/label_throughput_dask.py --system si --frames 512 --device cuda \
        --output benchmarks/results/label_dask_si_2xh200.json
    python benchmarks/label_throughput_dask.py --system ethanol --frames 4096 \
        --fennol-glob '../shared/teachers/fennol-ani1x/ani1x_model*.fnx' --device cuda \
        --output benchmarks/results/label_dask_ethanol_2xh200.json

On a CPU, tiny (EMT is a real calculator; ``--gpus none`` makes CPU workers):

    python benchmarks/label_throughput_dask.py --system ethanol \
        --teacher ase:ase.calculators.emt:EMT --frames 16 --device cpu --gpus none \
        --workers 1,2 --output /tmp/label_dask_cpu.json

For each worker count W the script starts a local cluster (W workers; with GPUs they
take the GPUs in turn), then times three things separately:

- ``cluster_start_s``: starting the worker processes;
- ``teacher_load_s``: every worker loads the teacher and labels one batch (imports,
  weights, the first compilation): the start-up a real run pays once per worker;
- ``label_s``: :func:`jaxdistill.fanout.label_on_cluster` on the N frames with the
  teachers loaded (sharding, labelling, merging into one store): the steady state,
  reported as ``frames_per_s``.

``ratio`` is frames/s with the most workers over frames/s with one. Frames: 64-atom
diamond Si rattled by 0.1 Å (SevenNet-0), or ethanol rattled by 0.05 Å (FeNNol ANI-1x
ensemble). The JSON is written after each worker count.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

# Several JAX teachers may share a GPU, and the parent must not hold one.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_frames(system: str, n: int):
    import ase.build

    frames = []
    for i in range(n):
        if system == "si":
            atoms = ase.build.bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
            atoms.rattle(0.1, seed=i)
        else:
            atoms = ase.build.molecule("CH3CH2OH")
            atoms.rattle(0.05, seed=i)
        atoms.info.update(sampler="rattle", seed=i)
        frames.append(atoms)
    return frames


def warm_worker(spec: str, options: dict, frames: list) -> float:
    """In a worker: load the teacher (cached there for the shards) and label a batch."""
    from jaxdistill.cluster import prepare_worker, worker_teacher

    start = time.perf_counter()
    prepare_worker()
    worker_teacher(spec, options).label(frames)
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict:
    import dask

    from jaxdistill.cluster import open_client, visible_gpus
    from jaxdistill.config.cluster import ClusterConfig
    from jaxdistill.data.store import LabelStore
    from jaxdistill.fanout import label_on_cluster

    if args.teacher:
        spec = args.teacher
    elif args.system == "si":
        spec = "sevennet:7net-0"
    else:
        if not args.fennol_glob:
            raise SystemExit("--system ethanol needs --fennol-glob (or --teacher)")
        spec = f"fennol:{args.fennol_glob}"
    gpus = (
        () if args.gpus == "none" else (None if args.gpus == "all" else tuple(args.gpus.split(",")))
    )
    n_gpus = len(visible_gpus()) if gpus is None else len(gpus)
    counts = (
        [int(w) for w in args.workers.split(",")] if args.workers else sorted({1, max(1, n_gpus)})
    )
    frames = make_frames(args.system, args.frames)
    options = {"device": args.device}
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "label_throughput_dask",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "dask": dask.__version__,
        "system": args.system,
        "teacher": spec,
        "device": args.device,
        "gpus_visible": n_gpus,
        "n_frames": len(frames),
        "atoms_per_frame": len(frames[0]),
        "batch_size": args.batch_size,
        "runs": [],
    }
    for count in counts:
        store = work / f"labels-{args.system}-{count}w.h5"
        store.unlink(missing_ok=True)
        config = ClusterConfig(workers=count, gpus=gpus, dashboard_address=None)
        start = time.perf_counter()
        with open_client(config) as client:
            started = time.perf_counter() - start
            addresses = list(client.scheduler_info()["workers"])
            warm = client.gather(
                [
                    client.submit(
                        warm_worker,
                        spec,
                        options,
                        frames[: args.batch_size],
                        workers=[address],
                        pure=False,
                    )
                    for address in addresses
                ]
            )
            start = time.perf_counter()
            summary = label_on_cluster(
                spec,
                frames,
                store,
                client,
                teacher_options=options,
                batch_size=args.batch_size,
                progress=False,
            )
            label_s = time.perf_counter() - start
        with LabelStore(store) as labels:
            assert len(labels) == len(frames), "every frame once"
        entry = {
            "workers": count,
            "cluster_start_s": round(started, 3),
            "teacher_load_s": round(max(warm), 3),
            "teacher_load_s_per_worker": [round(w, 3) for w in warm],
            "label_s": round(label_s, 3),
            "frames_per_s": round(len(frames) / label_s, 3),
            "labelled": summary.n_labelled,
        }
        result["runs"].append(entry)
        print(json.dumps(entry), flush=True)
        rates = {r["workers"]: r["frames_per_s"] for r in result["runs"]}
        result["ratio"] = round(rates[max(rates)] / rates[min(rates)], 3)
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
        store.unlink(missing_ok=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", choices=("si", "ethanol"), default="si")
    parser.add_argument("--frames", type=int, default=512)
    parser.add_argument("--teacher", help="teacher spec (default: by system)")
    parser.add_argument("--fennol-glob", help="FeNNol ANI-1x models, e.g. '.../ani1x_model*.fnx'")
    parser.add_argument("--device", default="cuda", help="cpu, cuda")
    parser.add_argument("--gpus", default="all", help="all, none, or a list: 0,1")
    parser.add_argument("--workers", help="worker counts, e.g. 1,2 (default: 1 and #GPUs)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workdir", default="/tmp/jaxdistill-label-dask")
    parser.add_argument("--output", required=True, help="JSON file to write")
    result = run(parser.parse_args())
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))


if __name__ == "__main__":  # the workers are spawned processes: guard the entry point
    main()
