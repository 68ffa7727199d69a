"""SevenNet teachers (``sevennet:<name-or-path>``), through sevenn's own ASE calculator.

``7net-0`` (materials, 89 elements) ships inside the sevenn wheel, so it works offline.
torch and sevenn are imported only inside :func:`load_sevennet_teacher`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from jaxdistill.teachers.ase import AseTeacher
from jaxdistill.teachers.base import check_file, file_sha256, package_version, require_package

__all__ = ["load_sevennet_teacher"]


def load_sevennet_teacher(
    model: str = "7net-0",
    device: str = "cpu",
    modal: str | None = None,
    **kwargs: Any,
) -> AseTeacher:
    """Load a SevenNet model as a teacher.

    Args:
        model: A pretrained name known to sevenn (``7net-0``, ``7net-omat``, ...) or the
            path of a SevenNet checkpoint (``.pth``).
        device: torch device, ``"cpu"`` or ``"cuda[:N]"``.
        modal: Fidelity of a multi-fidelity model (e.g. ``"mpa"`` for 7net-mf-ompa).
        **kwargs: Passed to ``sevenn.calculator.SevenNetCalculator``.

    Returns:
        An :class:`~jaxdistill.teachers.ase.AseTeacher` around ``SevenNetCalculator``.

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
    return AseTeacher(calculator, name=name, device=str(device), provenance=provenance)
