"""The whole ``jaxdistill distill`` configuration and the hash of each stage's part.

Imports no jax: reading and checking a YAML stays cheap (building the ``train`` section
asks the model registry about the architecture, which imports it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxdistill.config.active import ActiveLearningConfig
from jaxdistill.config.cluster import ClusterConfig
from jaxdistill.config.keys import check_keys, read_yaml
from jaxdistill.config.sampling import SamplingConfig
from jaxdistill.config.train import TrainConfig, resolve_config
from jaxdistill.config.validation import MDValidationConfig, PhononConfig, VibrationsConfig

STAGES = (
    "sample",
    "label",
    "train",
    "refine",
    "evaluate",
    "md",
    "phonons",
    "vibrations",
    "report",
)

#: Stages that run only when their section is configured. Unconfigured, they are left
#: out of the hash chain, so runs made before they existed keep their hashes.
OPTIONAL_STAGES = ("refine", "phonons", "vibrations")


@dataclass(frozen=True)
class HessianLabelConfig:
    """The ``hessian_labels`` section: Hessian-vector labels of the label stage
    (``jaxdistill label --hessian-directions``; docs/data.md).

    Attributes:
        directions: unit directions ``u`` per frame, each labelled with the teacher's
            ``H·u`` (eV/Å²).
        method: "auto" (the teacher's autodiff when it has one), "autodiff" or
            "finite-difference".
        step_angstrom: step of the finite differences along each unit direction, Å.
        seed: seed of the directions.
    """

    directions: int = 4
    method: str = "auto"
    step_angstrom: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if self.directions < 1:
            raise ValueError(f"hessian_labels.directions must be >= 1, got {self.directions}")
        if self.method not in ("auto", "autodiff", "finite-difference"):
            raise ValueError(
                "hessian_labels.method must be auto, autodiff or finite-difference, "
                f"got {self.method!r}"
            )
        if not self.step_angstrom > 0:
            raise ValueError(f"hessian_labels.step_angstrom must be > 0, got {self.step_angstrom}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HessianLabelConfig:
        """Build from the parsed section; unknown keys and wrong types raise."""
        check_keys(cls, data, "hessian_labels")
        return cls(**dict(data))

    def label_arguments(self) -> dict[str, Any]:
        """The keyword arguments of :func:`jaxdistill.labelling.label`."""
        return {
            "hessian_directions": self.directions,
            "hessian_method": self.method,
            "hessian_step_angstrom": self.step_angstrom,
            "hessian_seed": self.seed,
        }


@dataclass(frozen=True)
class DistillConfig:
    """A whole distillation (the YAML file given to ``jaxdistill distill``).

    Attributes:
        name: run name; the default run directory is ``runs/<name>``.
        teacher: teacher spec (``sevennet:7net-0``, ``fennol:/path/model.fnx``,
            ``orb:orb-v3-conservative-inf-omat[@weights.ckpt]``, ``ase:module:factory``).
        teacher_options: keyword arguments of :func:`jaxdistill.load_teacher`
            (e.g. ``{precision: float32-high}`` for Orb).
        device: device of torch teachers: "cpu", "cuda" or "auto" (CUDA when torch sees
            a GPU).
        sampling: the :class:`~jaxdistill.config.sampling.SamplingConfig` section.
        label_batch_size: frames per teacher call while labelling (None: the teacher's
            own default).
        hessian_labels: the :class:`HessianLabelConfig` section: also label Hessian-vector
            products (for Hessian distillation), or None (default) for none.
        train: the :class:`~jaxdistill.train.config.TrainConfig` section.
        evaluate_split: held-out frames to evaluate on ("test", "validation", "all").
        md_validation: the :class:`~jaxdistill.validation.MDValidationConfig` section,
            or None to skip MD validation.
        active_learning: the :class:`~jaxdistill.config.ActiveLearningConfig` section
            (the ``refine`` stage), or None (default) for none.
        phonons: the :class:`~jaxdistill.config.validation.PhononConfig` section (the
            ``phonons`` stage), or None (default) for none.
        vibrations: the :class:`~jaxdistill.config.validation.VibrationsConfig` section
            (the ``vibrations`` stage), or None (default) for none.
        cluster: the :class:`~jaxdistill.config.cluster.ClusterConfig` section: the
            Dask cluster that runs the teacher MD trajectories (sample stage) and the
            labelling (label stage), or None (default) to run them in this process. The
            frames and labels are the same either way, so it is not part of any stage's
            hash. The old ``sample_workers: N`` still reads, as ``cluster: {workers:
            N}`` (N > 1), with a FutureWarning.
    """

    name: str
    teacher: str
    sampling: SamplingConfig
    train: TrainConfig
    teacher_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    device: str = "auto"
    label_batch_size: int | None = None
    hessian_labels: HessianLabelConfig | None = None
    evaluate_split: str = "test"
    md_validation: MDValidationConfig | None = dataclasses.field(default_factory=MDValidationConfig)
    active_learning: ActiveLearningConfig | None = None
    cluster: ClusterConfig | None = None
    phonons: PhononConfig | None = None
    vibrations: VibrationsConfig | None = None

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], base_dir: str | Path | None = None
    ) -> DistillConfig:
        """Build from a mapping (parsed YAML); unknown keys raise ValueError naming them."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a distill config must be a mapping, got {type(data).__name__}")
        data = _sample_workers_alias(data)
        check_keys(cls, data, "the distill config")
        for key in ("name", "teacher", "sampling"):
            if key not in data:
                raise ValueError(f"the distill config needs '{key}'")
        values = dict(data)
        values["sampling"] = SamplingConfig.from_dict(data["sampling"], base_dir=base_dir)
        values["train"] = resolve_config(dict(data.get("train") or {}))
        md = data.get("md_validation", {})
        values["md_validation"] = None if md is False else MDValidationConfig.from_dict(md)
        values["teacher_options"] = dict(data.get("teacher_options") or {})
        active = data.get("active_learning")
        values["active_learning"] = (
            None if active is None or active is False else ActiveLearningConfig.from_dict(active)
        )
        for key, section in (("phonons", PhononConfig), ("vibrations", VibrationsConfig)):
            given = data.get(key)
            values[key] = (
                None if given is None or given is False else section.from_dict(given, base_dir)
            )
        given = data.get("hessian_labels")
        values["hessian_labels"] = (
            None if given is None or given is False else HessianLabelConfig.from_dict(given)
        )
        given = data.get("cluster")
        values["cluster"] = (
            None if given is None or given is False else ClusterConfig.from_dict(given)
        )
        if values.get("device", "auto") not in ("auto", "cpu", "cuda") and not str(
            values["device"]
        ).startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {values['device']!r}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> DistillConfig:
        """Load a YAML file (relative structure paths resolve against its folder)."""
        path = Path(path)
        data = read_yaml(path, "config")
        if data is None:
            raise ValueError(f"config {path} is empty")
        return cls.from_dict(data, base_dir=path.parent)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict that :meth:`from_dict` reads back."""
        return {
            "name": self.name,
            "teacher": self.teacher,
            "teacher_options": dict(self.teacher_options),
            "device": self.device,
            "sampling": self.sampling.to_dict(),
            "label_batch_size": self.label_batch_size,
            "train": self.train.to_dict(),
            "evaluate_split": self.evaluate_split,
            "md_validation": (
                _plain(dataclasses.asdict(self.md_validation)) if self.md_validation else False
            ),
            "active_learning": (
                _plain(self.active_learning.to_dict()) if self.active_learning else None
            ),
            **({"cluster": self.cluster.to_dict()} if self.cluster else {}),
            **(
                {"hessian_labels": dataclasses.asdict(self.hessian_labels)}
                if self.hessian_labels
                else {}
            ),
            # the optional validation sections only when set (older config.yaml files
            # lack them and read back the same)
            **({"phonons": self.phonons.to_dict()} if self.phonons else {}),
            **({"vibrations": self.vibrations.to_dict()} if self.vibrations else {}),
        }

    def stage_sections(self) -> dict[str, Any]:
        """The configuration each stage depends on directly (hashed for resumption)."""
        config = self.to_dict()
        return {
            "sample": [config["sampling"], config["teacher"], config["teacher_options"]],
            # Hessian labels only when asked for, so earlier runs keep their hashes.
            "label": [config["teacher"], config["teacher_options"]]
            + ([config["hessian_labels"]] if "hessian_labels" in config else []),
            "train": config["train"],
            # The sampling config too: exploration starts from its structures.
            "refine": (
                [config["active_learning"], config["sampling"], config["label_batch_size"]]
                if config["active_learning"]
                else None
            ),
            "evaluate": config["evaluate_split"],
            "md": config["md_validation"],
            "phonons": config.get("phonons"),
            "vibrations": config.get("vibrations"),
            "report": None,
        }


def _sample_workers_alias(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """``sample_workers: N`` (before the ``cluster`` section) as ``cluster: {workers: N}``
    (none for N = 1), with a FutureWarning; both together are refused."""
    if not isinstance(data, Mapping) or "sample_workers" not in data:
        return data
    values = dict(data)
    workers = values.pop("sample_workers")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"sample_workers must be an integer >= 1, got {workers!r}")
    if values.get("cluster") not in (None, False):
        raise ValueError(
            "give 'cluster' only: 'sample_workers' is its deprecated form "
            "(sample_workers: N is cluster: {workers: N})"
        )
    warnings.warn(
        f"the config key sample_workers is deprecated: write cluster: {{workers: {workers}}} "
        "(docs/cluster.md); the cluster now runs the labelling too",
        FutureWarning,
        stacklevel=3,
    )
    if workers > 1:
        values["cluster"] = {"workers": workers}
    return values


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def stage_hashes(config: DistillConfig) -> dict[str, str]:
    """Hash of each stage's own section chained with the previous stage's hash.

    Chaining makes a change upstream (say, the sampling) invalidate everything after it.
    An optional stage that is not configured (``refine`` without active learning,
    ``phonons``, ``vibrations``) is left out of the chain, so runs made before that
    stage existed keep their hashes.
    """
    hashes, previous = {}, ""
    for stage, section in config.stage_sections().items():
        if stage in OPTIONAL_STAGES and section is None:
            hashes[stage] = previous
            continue
        text = previous + json.dumps(section, sort_keys=True, default=str)
        previous = hashlib.sha256(text.encode()).hexdigest()[:16]
        hashes[stage] = previous
    return hashes
