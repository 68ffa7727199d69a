"""Orb teachers (``orb:<model-name>[@/path/weights.ckpt]``) through orb-models' own loaders.

The model is built and its weights loaded by ``orb_models.forcefield.pretrained``
(``ORB_PRETRAINED_MODELS[name](weights_path=..., device=..., precision=...,
compile=...)``), exactly as orb's documentation does. Without ``@path`` the loader's
default URL is fetched (through ``cached_path``) and its local copy is hashed.

Labelling evaluates several structures per Orb call: graphs are built with
``ase_atoms_to_atom_graphs`` and concatenated with ``orb_models.forcefield.base.
batch_graphs``; the outputs are those of ``ORBCalculator`` (conservative models: energy
gradients; direct models: the force and stress heads).

orb-models 0.5 and 0.6+ (0.7 needs Python 3.12) are both supported: from 0.6 on a
loader returns ``(model, atoms_adapter)`` and graphs come from
``atoms_adapter.from_ase_atoms`` / ``atoms_adapter.batch`` (the cutoff and neighbour
limit live on the adapter); 0.5's loaders return the model, whose ``system_config``
feeds ``ase_atoms_to_atom_graphs`` and ``batch_graphs``. The model names are the same.

Loading an Orb model calls ``torch.set_default_dtype`` and
``torch.set_float32_matmul_precision`` globally; both are restored afterwards and set
only for the duration of each labelling call.

torch and orb_models are imported only inside this module's functions.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import ase
import numpy as np

from jaxdistill.teachers.base import (
    NAN_STRESS,
    BaseTeacher,
    TeacherLabels,
    check_file,
    file_sha256,
    package_version,
    require_package,
    wants_stress,
)
from jaxdistill.teachers.hessian import checked_directions, minus_batched_vjp

__all__ = ["OrbTeacher", "load_orb_teacher", "orb_model_names"]


@contextlib.contextmanager
def _torch_numerics(
    dtype: Any | None = None, matmul_precision: str | None = None
) -> Iterator[None]:
    """Temporarily set torch's default dtype and float32 matmul precision, then restore."""
    import torch

    old_dtype = torch.get_default_dtype()
    old_precision = torch.get_float32_matmul_precision()
    try:
        if dtype is not None:
            torch.set_default_dtype(dtype)
        if matmul_precision is not None:
            torch.set_float32_matmul_precision(matmul_precision)
        yield
    finally:
        torch.set_default_dtype(old_dtype)
        torch.set_float32_matmul_precision(old_precision)


def orb_model_names() -> list[str]:
    """Names accepted after ``orb:`` (from ``ORB_PRETRAINED_MODELS``)."""
    pretrained = require_package(
        "orb_models.forcefield.pretrained", extra="orb", distribution="orb-models"
    )
    return sorted(pretrained.ORB_PRETRAINED_MODELS)


class OrbTeacher(BaseTeacher):
    """An Orb model (conservative or direct) as a teacher.

    Args:
        model: A loaded ``ConservativeForcefieldRegressor`` or ``DirectForcefieldRegressor``
            (e.g. from ``orb_models.forcefield.pretrained``), in eval mode.
        name: Teacher name (the orb model name).
        device: torch device the model lives on.
        provenance: Extra provenance keys (weights, SHA-256, precision...).
        batch_size: Structures per Orb call (the batching gain is measured in
            docs/data.md).
        max_batch_atoms: A batch is cut earlier when it would exceed this many atoms.
        matmul_precision: torch float32 matmul precision to use during calls (the one
            orb's loader chose, ``"high"`` or ``"highest"``).
        charge: Total charge used when a frame has no ``atoms.info["charge"]``
            (OMol models need charge and spin; materials models ignore them).
        spin: Spin multiplicity used when a frame has no ``atoms.info["spin"]``.
        atoms_adapter: orb-models >= 0.6: the ``ForcefieldAtomsAdapter`` its loader
            returned with the model (graph construction); None for orb-models 0.5.
    """

    #: The ``K`` double-backward passes of ``H·u`` as one vmapped pass, by torch device
    #: type: never. Orb-v3 conservative, 64-atom Si, ms a frame for labels and ``H·u``
    #: from one forward, vmapped against one pass per direction: H100, K = 2: 127
    #: against 80, K = 4: 170 against 136 (docs/data.md).
    BATCHED_DOUBLE_BACKWARD: ClassVar[dict[str, bool]] = {"cuda": False, "cpu": False}

    def __init__(
        self,
        model: Any,
        *,
        name: str,
        device: str = "cpu",
        provenance: dict[str, Any] | None = None,
        batch_size: int = 8,
        max_batch_atoms: int = 4096,
        matmul_precision: str | None = None,
        charge: int | None = None,
        spin: int | None = None,
        atoms_adapter: Any | None = None,
    ) -> None:
        import torch

        self.model = model
        self.atoms_adapter = atoms_adapter
        # the graph settings: on the adapter from orb-models 0.6, on the model before
        graph_config = atoms_adapter if atoms_adapter is not None else model.system_config
        self.device = torch.device(device)
        self.dtype = next(model.parameters()).dtype
        self.conservative = hasattr(model, "grad_forces_name")
        self.has_stress = bool(model.has_stress)
        conditioner = getattr(model.model, "conditioner", None)
        self.expects_charge_and_spin = (
            conditioner is not None and type(conditioner).__name__ == "ChargeSpinConditioner"
        )
        self.batch_size = int(batch_size)
        self.max_batch_atoms = int(max_batch_atoms)
        self.matmul_precision = matmul_precision
        self.charge = charge
        self.spin = spin
        prov: dict[str, Any] = {
            "package": "orb-models",
            "version": package_version("orb-models"),
            "torch_version": package_version("torch"),
            "device": str(device),
            "precision": str(self.dtype).replace("torch.", ""),
            "conservative": self.conservative,
            "weights": [],
            "weights_sha256": [],
            "cutoff_angstrom": float(graph_config.radius),
            "max_num_neighbors": int(graph_config.max_num_neighbors),
        }
        prov.update(provenance or {})
        super().__init__(name, prov)

    def label(self, frames: Sequence[ase.Atoms]) -> list[TeacherLabels]:
        """Label frames, packing up to ``batch_size`` frames / ``max_batch_atoms`` per call."""
        frames = list(frames)
        labels: list[TeacherLabels] = []
        start = 0
        while start < len(frames):
            stop, atoms_in_batch = start, 0
            while stop < len(frames) and stop - start < self.batch_size:
                n = len(frames[stop])
                if stop > start and atoms_in_batch + n > self.max_batch_atoms:
                    break
                atoms_in_batch += n
                stop += 1
            labels.extend(self._label_batch(frames[start:stop]))
            start = stop
        return labels

    @property
    def hessian_vector_products(self) -> Callable[[ase.Atoms, np.ndarray], np.ndarray]:
        """Autodiff ``H·u`` (see :meth:`_conservative_hvp`), for conservative models only.

        A direct model's forces are not the gradient of an energy, so it has no Hessian
        to differentiate: for it this attribute is absent (``AttributeError``, so
        ``hasattr``/``getattr(..., None)`` see no method) and Hessian labels fall back
        to finite differences of its forces.
        """
        self._require_conservative()
        return self._conservative_hvp

    @property
    def label_with_hessian(
        self,
    ) -> Callable[[ase.Atoms, np.ndarray], tuple[TeacherLabels, np.ndarray]]:
        """Labels and ``H·u`` of one structure from one forward pass (conservative models
        only, as :attr:`hessian_vector_products`): the energy, forces and stress are the
        outputs of the forward whose force graph gives the products, read as a label
        call reads them, instead of a label call beside the Hessian call.

        Returns a function ``(atoms, directions) -> (labels, H·u [K, n_atoms, 3]
        float64 eV/Å²)``.
        """
        self._require_conservative()
        return self._labels_and_conservative_hvp

    def _require_conservative(self) -> None:
        """AttributeError for a direct model, so that ``hasattr`` sees no autodiff
        Hessian methods on it."""
        if not self.conservative:
            raise AttributeError(
                f"{self.name} is a direct Orb model (forces not derived from an energy): "
                "no autodiff Hessian-vector products"
            )

    def _conservative_hvp(self, atoms: ase.Atoms, directions: np.ndarray) -> np.ndarray:
        """``H·u`` of :meth:`_output_and_conservative_hvp` alone."""
        return self._output_and_conservative_hvp(atoms, directions)[1]

    def _labels_and_conservative_hvp(
        self, atoms: ase.Atoms, directions: np.ndarray
    ) -> tuple[TeacherLabels, np.ndarray]:
        """The labels of :meth:`_output_and_conservative_hvp`'s forward pass (as
        :meth:`label` gives them) and its ``H·u``."""
        out, products = self._output_and_conservative_hvp(atoms, directions)
        return self._labels_from_output(out, [atoms])[0], products

    def _output_and_conservative_hvp(
        self, atoms: ase.Atoms, directions: np.ndarray
    ) -> tuple[dict[str, Any], np.ndarray]:
        """Orb's outputs and ``H·u`` for each direction ``u`` by torch double backward.

        ``H = d²E/dR²`` is the Hessian of the total energy with respect to the Cartesian
        positions at ``atoms`` (the graph, neighbours and cell shifts, held fixed as
        for a force call). Orb's conservative forward takes ``-dE/dR`` with
        ``create_graph=self.training``; the top-level module alone is put in training
        mode for this call (its children, heads and normalisers, stay in eval mode), so
        the forces keep their graph; then ``H·u = -d(F·u)/dR`` for all ``K`` directions
        (one backward pass each, see :attr:`BATCHED_DOUBLE_BACKWARD`). Precision: the
        model's (float32 by default, so float32-accurate products).

        Args:
            atoms: The structure (not modified).
            directions: ``[K, n_atoms, 3]`` float64, each a unit vector over the
                ``3 n_atoms`` coordinates (dimensionless).

        Returns:
            ``(out, H·u)``: the model's outputs of that forward pass (energy, forces,
            stress) and ``[K, n_atoms, 3]`` float64, ``H·u_k`` in eV/Å².
        """
        import torch

        directions = checked_directions(directions, len(atoms))
        model = self.model
        with _torch_numerics(self.dtype, self.matmul_precision), torch.enable_grad():
            # The graph exactly as a label call builds it (orb-models 0.5 or >= 0.6).
            graph = self._batched_graph([atoms])
            training = model.training
            model.training = True
            try:
                out = model.predict(graph)
            finally:
                model.training = training
            forces = out[model.grad_forces_name]
            # The forward marks this leaf requires_grad and differentiates through it.
            positions = graph.node_features["positions"]
            if not forces.requires_grad:
                raise RuntimeError(
                    "this orb-models version does not keep the graph of its forces in "
                    "training mode; use finite-difference Hessian-vector products"
                )
            products = minus_batched_vjp(
                forces, positions, directions, self.BATCHED_DOUBLE_BACKWARD
            )
        return out, products

    def _prepared(self, atoms: ase.Atoms) -> ase.Atoms:
        pbc = np.asarray(atoms.pbc, dtype=bool)
        if pbc.any() and not pbc.all():
            raise ValueError(
                f"Orb supports fully periodic or non-periodic structures, not pbc={pbc.tolist()}; "
                "pad a slab with vacuum and make it fully periodic"
            )
        if not self.expects_charge_and_spin:
            return atoms
        work = atoms.copy()
        for key, default in (("charge", self.charge), ("spin", self.spin)):
            if key not in work.info:
                if default is None:
                    raise ValueError(
                        f"{self.name} needs atoms.info['charge'] and ['spin'] (total charge "
                        "and spin multiplicity); set them on the frames or pass charge=, "
                        "spin= to load_teacher"
                    )
                work.info[key] = default
        return work

    def _batched_graph(self, frames: Sequence[ase.Atoms]) -> Any:
        """One Orb graph of ``frames``, built frame by frame as ``ORBCalculator`` builds
        each, in this teacher's dtype and on its device (orb-models 0.5 or >= 0.6)."""
        options = {
            "device": self.device,
            "output_dtype": self.dtype,
            "graph_construction_dtype": self.dtype,
        }
        if self.atoms_adapter is not None:  # orb-models >= 0.6
            adapter = self.atoms_adapter
            graphs = [adapter.from_ase_atoms(self._prepared(a), **options) for a in frames]
            batch = adapter.batch(graphs) if len(graphs) > 1 else graphs[0]
            return batch.to(self.device)
        atomic_system = require_package(
            "orb_models.forcefield.atomic_system", extra="orb", distribution="orb-models"
        )
        base = require_package("orb_models.forcefield.base", extra="orb", distribution="orb-models")
        graphs = [
            atomic_system.ase_atoms_to_atom_graphs(
                self._prepared(atoms), system_config=self.model.system_config, **options
            )
            for atoms in frames
        ]
        batch = base.batch_graphs(graphs) if len(graphs) > 1 else graphs[0]
        return batch.to(self.device)

    def _label_batch(self, frames: Sequence[ase.Atoms]) -> list[TeacherLabels]:
        with _torch_numerics(self.dtype, self.matmul_precision):
            return self._labels_from_output(self.model.predict(self._batched_graph(frames)), frames)

    def _labels_from_output(
        self, out: dict[str, Any], frames: Sequence[ase.Atoms]
    ) -> list[TeacherLabels]:
        """One :class:`TeacherLabels` per frame from the model's outputs for their batch."""
        import torch

        model = self.model
        energy_key = "energy"
        if self.conservative:
            forces_key, stress_key = model.grad_forces_name, model.grad_stress_name
        else:
            forces_key, stress_key = "forces", "stress"
        energies = out[energy_key].detach().to(torch.float64).cpu().numpy().reshape(-1)
        forces = out[forces_key].detach().to(torch.float64).cpu().numpy().reshape(-1, 3)
        stresses = None
        if self.has_stress and stress_key in out:
            stresses = (
                out[stress_key].detach().to(torch.float64).cpu().numpy().reshape(len(frames), 6)
            )
        labels: list[TeacherLabels] = []
        offset = 0
        for i, atoms in enumerate(frames):
            n = len(atoms)
            stress = (
                stresses[i].copy()
                if (stresses is not None and wants_stress(atoms))
                else NAN_STRESS.copy()
            )
            labels.append(
                TeacherLabels(
                    energy=float(energies[i]),
                    forces=forces[offset : offset + n].copy(),
                    stress=stress,
                )
            )
            offset += n
        return labels


def load_orb_teacher(
    name: str,
    weights_path: str | Path | None = None,
    device: str = "cpu",
    precision: str = "float32-high",
    compile: bool = False,
    batch_size: int = 8,
    max_batch_atoms: int = 4096,
    charge: int | None = None,
    spin: int | None = None,
) -> OrbTeacher:
    """Load an Orb model through orb-models' pretrained loader.

    Args:
        name: A key of ``orb_models.forcefield.pretrained.ORB_PRETRAINED_MODELS``, e.g.
            ``orb-v3-conservative-inf-omat``, ``orb-v3-direct-20-omat``,
            ``orb-v3-conservative-omol``.
        weights_path: Local weights (a ``torch.save``-d state dict matching the named
            architecture). None: the loader's default URL (needs internet once).
        device: ``"cpu"`` or ``"cuda[:N]"``.
        precision: ``"float32-high"`` (orb's default), ``"float32-highest"`` or
            ``"float64"``.
        compile: ``torch.compile`` the model (costs 15–65 s on CPU for no gain there).
        batch_size: Structures per Orb call.
        max_batch_atoms: Cap on atoms per Orb call.
        charge: Default total charge for OMol models (frames' ``info['charge']`` wins).
        spin: Default spin multiplicity for OMol models (frames' ``info['spin']`` wins).

    Returns:
        An :class:`OrbTeacher`.

    Raises:
        ImportError: orb-models (or torch) is not installed.
        ValueError: Unknown model name.
        FileNotFoundError: ``weights_path`` does not exist.
        RuntimeError: Weights could not be downloaded (no internet) or do not match the
            architecture.
    """
    import_hint = "orb_models.forcefield.pretrained"
    pretrained = require_package(import_hint, extra="orb", distribution="orb-models")
    require_package("torch", extra="orb")
    loaders = pretrained.ORB_PRETRAINED_MODELS
    if name not in loaders:
        raise ValueError(f"unknown Orb model {name!r}; known: {', '.join(sorted(loaders))}")
    loader = loaders[name]

    if weights_path is not None:
        local = check_file(weights_path, "Orb weights file")
        source = str(local)
    else:
        source = inspect.signature(loader).parameters["weights_path"].default
        cached_path = require_package("cached_path", extra="orb").cached_path
        try:
            local = Path(cached_path(source))
        except Exception as error:  # network errors come in many types
            raise RuntimeError(
                f"could not fetch Orb weights for {name} from {source} "
                f"({type(error).__name__}: {error}). "
                f"Without internet, pass local weights: orb:{name}@/path/to/weights.ckpt"
            ) from None

    with _torch_numerics(), warnings.catch_warnings():
        # The loader warns that it sets torch's global default dtype; we restore it.
        warnings.simplefilter("ignore")
        try:
            model = loader(
                weights_path=str(local), device=device, precision=precision, compile=compile
            )
            # orb-models >= 0.6 returns (model, atoms_adapter); 0.5 the model alone
            model, atoms_adapter = model if isinstance(model, tuple) else (model, None)
        except RuntimeError as error:
            raise RuntimeError(
                f"Orb weights {local} do not fit the {name} architecture: {str(error)[:400]}"
            ) from None
        import torch

        matmul_precision = torch.get_float32_matmul_precision()

    provenance = {
        "spec": f"orb:{name}" + (f"@{local}" if weights_path is not None else ""),
        "model_name": name,
        "weights": [source],
        "weights_sha256": [file_sha256(local)],
        "precision": precision,
        "compile": compile,
    }
    return OrbTeacher(
        model,
        name=name,
        device=device,
        provenance=provenance,
        batch_size=batch_size,
        max_batch_atoms=max_batch_atoms,
        matmul_precision=matmul_precision,
        charge=charge,
        spin=spin,
        atoms_adapter=atoms_adapter,
    )
