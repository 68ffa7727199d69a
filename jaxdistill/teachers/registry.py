"""The teacher registry: :func:`load_teacher` turns a spec string, an ASE calculator or a
ready teacher into a :class:`~jaxdistill.teachers.base.Teacher`.

Each spec kind maps to the loader of one adapter module, imported only when that kind
is asked for (so ``import jaxdistill.teachers`` imports no teacher package). The
adapters import :mod:`jaxdistill.teachers.base`, never this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ase.calculators.calculator import Calculator

from jaxdistill.teachers.base import Teacher

__all__ = ["SPEC_FORMS", "load_teacher"]

#: The spec forms :func:`load_teacher` understands, shown in error messages.
SPEC_FORMS = (
    "orb:<model-name>  (e.g. orb:orb-v3-conservative-inf-omat)",
    "orb:<model-name>@/path/to/weights.ckpt",
    "fennol:/path/model.fnx  (several comma-separated paths or a glob = ensemble)",
    "sevennet:<name-or-path>  (e.g. sevennet:7net-0)",
    "ase:<module>:<factory>  (e.g. ase:ase.calculators.emt:EMT)",
)


@dataclass
class _ParsedSpec:
    kind: str
    body: str
    extra: dict[str, Any] = field(default_factory=dict)


def _parse_spec(spec: str) -> _ParsedSpec:
    kind, sep, body = spec.partition(":")
    if not sep or not body:
        raise ValueError(
            f"cannot parse teacher spec {spec!r}; expected one of:\n  " + "\n  ".join(SPEC_FORMS)
        )
    return _ParsedSpec(kind.strip().lower(), body.strip())


def load_teacher(
    spec: str | Calculator | Teacher,
    device: str = "cpu",
    **kwargs: Any,
) -> Teacher:
    """Load a teacher from a spec string, an ASE calculator or a ready teacher.

    Spec strings:

    - ``orb:<model-name>`` — Orb-v3 (or v2) through orb-models' own pretrained loader,
      which downloads the weights; ``orb:<model-name>@/path/weights.ckpt`` loads local
      weights through the same loader. Keyword arguments: ``precision``
      (``"float32-high"``, ``"float32-highest"``, ``"float64"``), ``compile`` (default
      False), ``batch_size`` (frames per Orb call, default 8), ``max_batch_atoms``,
      ``charge``/``spin`` (defaults for OMol models).
    - ``fennol:/path/model.fnx`` — a FeNNol model; several comma-separated paths or a
      glob make an ensemble (labels are the mean; disagreement is reported).
    - ``sevennet:<name-or-path>`` — SevenNet (``7net-0`` ships inside the sevenn wheel);
      keyword ``modal`` for multi-fidelity models.
    - ``ase:<module>:<factory>`` — ``factory(**kwargs)`` must return an ASE calculator,
      e.g. ``ase:ase.calculators.emt:EMT``.

    Args:
        spec: The spec string, an ``ase.calculators.calculator.Calculator`` instance
            (wrapped as an :class:`~jaxdistill.teachers.ase.AseTeacher`), or an object
            that already satisfies :class:`Teacher` (returned unchanged).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``, for torch teachers; recorded in
            the provenance of every teacher.
        **kwargs: Passed to the adapter (see above).

    Returns:
        A :class:`Teacher`.

    Raises:
        ValueError: An unknown spec form.
        ImportError: The teacher's package is not installed (the message names the
            ``pip install 'jaxdistill[...]'`` to run).
        FileNotFoundError: A weights file is missing (the message names it).
    """
    if isinstance(spec, Calculator):
        from jaxdistill.teachers.ase import AseTeacher

        return AseTeacher(spec, device=device, **kwargs)
    if not isinstance(spec, str):
        if isinstance(spec, Teacher):
            return spec
        raise TypeError(
            "load_teacher expects a spec string, an ASE Calculator or a Teacher, "
            f"got {type(spec)!r}"
        )

    parsed = _parse_spec(spec)
    if parsed.kind == "orb":
        from jaxdistill.teachers.orb import load_orb_teacher

        name, _, weights = parsed.body.partition("@")
        return load_orb_teacher(
            name.strip(), weights_path=weights.strip() or None, device=device, **kwargs
        )
    if parsed.kind == "fennol":
        from jaxdistill.teachers.fennol import load_fennol_teacher

        return load_fennol_teacher(parsed.body, device=device, **kwargs)
    if parsed.kind == "sevennet":
        from jaxdistill.teachers.sevennet import load_sevennet_teacher

        return load_sevennet_teacher(parsed.body, device=device, **kwargs)
    if parsed.kind == "ase":
        from jaxdistill.teachers.ase import load_ase_teacher

        return load_ase_teacher(parsed.body, device=device, **kwargs)
    raise ValueError(
        f"unknown teacher kind {parsed.kind!r} in spec {spec!r}; expected one of:\n  "
        + "\n  ".join(SPEC_FORMS)
    )
