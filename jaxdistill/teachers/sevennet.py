"""SevenNet teachers (``sevennet:<name-or-path>``), through sevenn's own ASE calculator.

``7net-0`` (materials, 89 elements) ships inside the sevenn wheel, so it works offline.
torch and sevenn are imported only inside this module's functions and methods.

:class:`SevenNetTeacher` adds exact Hessian-vector products (torch double backward, see
:meth:`SevenNetTeacher.hessian_vector_products`) to the plain ASE-calculator teacher.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, ClassVar

import ase
import numpy as np

from jaxdistill.teachers.ase import AseTeacher
from jaxdistill.teachers.base import (
    NAN_STRESS,
    TeacherLabels,
    check_file,
    file_sha256,
    package_version,
    require_package,
    wants_stress,
)
from jaxdistill.teachers.hessian import checked_directions, minus_batched_vjp

__all__ = ["SevenNetTeacher", "load_sevennet_teacher"]


class SevenNetTeacher(AseTeacher):
    """SevenNet behind ``SevenNetCalculator``, with autodiff Hessian-vector products.

    Labels are exactly the calculator's (see :class:`AseTeacher`).
    """

    #: The ``K`` double-backward passes of ``H·u`` as one vmapped pass, by torch device
    #: type. 64-atom Si, ms a frame for labels and ``H·u`` from one forward, vmapped
    #: against one pass per direction: H100, K = 2: 120 against 167, K = 4: 155 against
    #: 323; 2-core CPU, K = 2: 2508 against 1644 (docs/data.md).
    BATCHED_DOUBLE_BACKWARD: ClassVar[dict[str, bool]] = {"cuda": True, "cpu": False}

    def hessian_vector_products(self, atoms: ase.Atoms, directions: np.ndarray) -> np.ndarray:
        """``H·u`` for each direction ``u`` by torch double backward through SevenNet
        (see :meth:`_output_and_hvp`; ``[K, n_atoms, 3]`` float64, eV/Å²)."""
        return self._output_and_hvp(atoms, directions)[1]

    def label_with_hessian(
        self, atoms: ase.Atoms, directions: np.ndarray
    ) -> tuple[TeacherLabels, np.ndarray]:
        """Labels and ``H·u`` of one structure from one forward pass: the energy, forces
        and stress are that pass's outputs, read as ``SevenNetCalculator`` reads them
        (``output_to_results``), instead of a label call beside the Hessian call.

        Returns:
            ``(labels, H·u [K, n_atoms, 3] float64 eV/Å²)``; the stress is NaN for a
            structure that is not periodic in all three directions, as in
            :meth:`~jaxdistill.teachers.ase.AseTeacher.label`.
        """
        output, products = self._output_and_hvp(atoms, directions)
        results = self.calculator.output_to_results(output)
        stress = NAN_STRESS.copy()
        if wants_stress(atoms):
            stress = np.asarray(results["stress"], dtype=np.float64).reshape(6)
        labels = TeacherLabels(
            energy=float(results["energy"]),
            forces=np.asarray(results["forces"], dtype=np.float64).reshape(len(atoms), 3),
            stress=stress,
        )
        return labels, products

    def _output_and_hvp(
        self, atoms: ase.Atoms, directions: np.ndarray
    ) -> tuple[dict[str, Any], np.ndarray]:
        """SevenNet's output dictionary and ``H·u`` by torch double backward.

        ``H = d²E/dR²`` is the Hessian of the total energy with respect to the Cartesian
        positions at ``atoms`` (periodic or not; the neighbour list and the integer cell
        shifts of ``atoms`` are held fixed, as for a force call). The graph is built as
        ``SevenNetCalculator.calculate`` builds it, except that the edge vectors are
        computed from a position tensor, ``r_ij = R_j - R_i + S_ij·cell``, so that
        SevenNet's own force module (``-dE/dr_ij`` scattered onto atoms) yields forces
        differentiable with respect to the positions; then ``H·u = -d(F·u)/dR`` for all
        ``K`` directions (one vmapped backward pass or one each, see
        :attr:`BATCHED_DOUBLE_BACKWARD`).

        Precision: the model runs in its own dtype (float32 for the pretrained
        models), so the products have float32 rounding, although the positions and
        edge vectors are formed in float64 as the calculator forms them.

        Args:
            atoms: The structure (not modified).
            directions: ``[K, n_atoms, 3]`` float64, each a unit vector over the
                ``3 n_atoms`` coordinates (dimensionless).

        Returns:
            ``(output, H·u)``: the model's outputs of that forward pass (energy,
            forces, stress, as the calculator gets them) and ``[K, n_atoms, 3]``
            float64, ``H·u_k`` in eV/Å².
        """
        import torch

        keys = require_package("sevenn._keys", extra="sevennet", distribution="sevenn")
        graph_data = require_package(
            "sevenn.atom_graph_data", extra="sevennet", distribution="sevenn"
        )
        dataload = require_package("sevenn.train.dataload", extra="sevennet", distribution="sevenn")
        directions = checked_directions(directions, len(atoms))
        calc = self.calculator
        model = calc.model
        # Refuse unknown elements exactly as attaching the calculator does.
        calc.set_atoms(atoms)
        data = graph_data.AtomGraphData.from_numpy_dict(
            dataload.unlabeled_atoms_to_graph(atoms, calc.cutoff, with_shift=True)
        )
        if calc.modal:
            data[keys.DATA_MODALITY] = calc.modal
        data.to(calc.device)
        dtype = data[keys.POS].dtype
        if model.key_grad == keys.EDGE_VEC:
            # Forces are -dE/d(edge vectors), which arrive precomputed by the host
            # neighbour list: rebuild them from positions with the same fixed cell
            # shifts, in float64 as the host does, so that the chain rule reaches R.
            positions = torch.as_tensor(
                np.asarray(atoms.positions, dtype=np.float64), device=calc.device
            ).requires_grad_(True)
            src, dst = data[keys.EDGE_IDX]
            shifts = data[keys.CELL_SHIFT].to(device=calc.device, dtype=torch.float64)
            cell = data[keys.CELL].to(device=calc.device, dtype=torch.float64).reshape(3, 3)
            edge_vec = positions[dst] - positions[src] + shifts @ cell
            data[keys.EDGE_VEC] = edge_vec.to(dtype)
        elif model.key_grad == keys.POS:
            # Models that differentiate with respect to positions (an edge-preprocess
            # module builds the edge vectors inside the model).
            positions = data[keys.POS].detach().clone().requires_grad_(True)
            data[keys.POS] = positions
        else:
            raise NotImplementedError(
                f"SevenNet model differentiates with respect to {model.key_grad!r}; "
                "autodiff Hessian-vector products support edge_vec or pos"
            )
        # SevenNet's force modules pass create_graph=self.training to autograd.grad;
        # switch only those modules to training mode, so the forces keep their graph
        # and every other module (none has dropout or running statistics) stays as is.
        force_modules = [m for m in model if hasattr(m, "get_grad_key")]
        modes = [m.training for m in force_modules]
        try:
            for module in force_modules:
                module.train(True)
            with torch.enable_grad():
                output = model(data)
                hvp = minus_batched_vjp(
                    output[keys.PRED_FORCE], positions, directions, self.BATCHED_DOUBLE_BACKWARD
                )
        finally:
            for module, mode in zip(force_modules, modes, strict=True):
                module.train(mode)
        return output, hvp


def load_sevennet_teacher(
    model: str = "7net-0",
    device: str = "cpu",
    modal: str | None = None,
    **kwargs: Any,
) -> SevenNetTeacher:
    """Load a SevenNet model as a teacher.

    Args:
        model: A pretrained name known to sevenn (``7net-0``, ``7net-omat``, ...) or the
            path of a SevenNet checkpoint (``.pth``).
        device: torch device, ``"cpu"`` or ``"cuda[:N]"``.
        modal: Fidelity of a multi-fidelity model (e.g. ``"mpa"`` for 7net-mf-ompa).
        **kwargs: Passed to ``sevenn.calculator.SevenNetCalculator``.

    Returns:
        A :class:`SevenNetTeacher` (an :class:`~jaxdistill.teachers.ase.AseTeacher`)
        around ``SevenNetCalculator``.

    Raises:
        ImportError: sevenn is not installed.
        FileNotFoundError: ``model`` looks like a path and the file does not exist, or
            the pretrained checkpoint is not on disk.
    """
    sevenn_calc = require_package("sevenn.calculator", extra="sevennet", distribution="sevenn")
    sevenn_util = require_package("sevenn.util", extra="sevennet", distribution="sevenn")

    weights: Path | None = None
    looks_like_path = any(ch in model for ch in "/\\") or model.endswith((".pth", ".pt"))
    if looks_like_path:
        weights = check_file(model, "SevenNet checkpoint")
        model_arg: str = str(weights)
    else:
        model_arg = model
        try:
            weights = Path(sevenn_util.pretrained_name_to_path(model))
        except Exception as error:  # sevenn raises a bare Exception/ValueError for unknown names
            raise ValueError(f"unknown SevenNet model {model!r} ({error})") from None
        # Newer pretrained models download on first use; fail clearly offline.
        if not weights.is_file():
            raise FileNotFoundError(
                f"SevenNet weights for {model!r} not found at {weights} (sevenn downloads "
                "some models on first use; this needs internet access)"
            )
    with warnings.catch_warnings():
        # sevenn warns that no tensor-product accelerator (cuEquivariance...) is on.
        warnings.simplefilter("ignore")
        calculator = sevenn_calc.SevenNetCalculator(
            model=model_arg, device=device, modal=modal, **kwargs
        )
    provenance = {
        "spec": f"sevennet:{model}",
        "package": "sevenn",
        "version": package_version("sevenn"),
        "torch_version": package_version("torch"),
        "weights": [str(weights)],
        "weights_sha256": [file_sha256(weights)],
        "precision": "float32",
        "device": str(device),
        "cutoff_angstrom": float(calculator.cutoff),
        "modal": modal,
    }
    name = Path(model).stem if looks_like_path else model
    return SevenNetTeacher(calculator, name=name, device=str(device), provenance=provenance)
