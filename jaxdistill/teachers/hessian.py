"""Hessian-vector products of a teacher: the curvature labels of Hessian distillation.

For a frame with ``n`` atoms, a *direction* ``u`` is a unit vector over all ``3n``
Cartesian coordinates (``[n, 3]``, ``sum(u**2) == 1``, dimensionless) and its label is
``H·u`` (``[n, 3]``, eV/Å²) where ``H = d²E/dR²`` is the Hessian of the teacher's total
energy with respect to the positions. Equivalently ``H·u = -d/dε F(R + ε u)`` at
``ε = 0``: the change of the forces along ``u``.

Two ways to get them:

- ``"autodiff"``: a teacher with a ``hessian_vector_products(atoms, directions)``
  method (torch double backward for SevenNet and Orb conservative, ``jax.jvp`` of the
  forces for FeNNol) gives them exactly, at the teacher's precision;
- ``"finite-difference"``: any teacher, by central differences of its forces,
  ``H·u ≈ -(F(R + h u) - F(R - h u)) / (2h)``: two force calls per direction, error
  ``O(h²)`` from the third derivative plus the teacher's force noise divided by ``2h``
  (see docs/data.md for the step's measured error).

The directions come from :func:`random_directions`, seeded per frame, so a resumed
labelling draws the same ones.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import ase
import numpy as np

__all__ = [
    "DEFAULT_FD_STEP_ANGSTROM",
    "HESSIAN_METHODS",
    "checked_directions",
    "finite_difference_hvp",
    "hessian_vector_products",
    "labels_and_hessian",
    "minus_batched_vjp",
    "random_directions",
    "resolve_hessian_method",
]

HESSIAN_METHODS = ("auto", "autodiff", "finite-difference")

# Central-difference step along a unit 3n-vector, Å. The displacement of one atom is
# about h·sqrt(3/(3n)), so even h = 0.01 Å moves atoms by thousandths of an ångström:
# small against the curvature scale, large against float32 force noise (see
# benchmarks/hvp_fd_step.py for the measured error against autodiff).
DEFAULT_FD_STEP_ANGSTROM = 0.01
# The step of the finite differences that stand in for a teacher's autodiff when it
# gives non-finite products on a frame.
AUTODIFF_FALLBACK_STEP_ANGSTROM = 1e-3


def random_directions(n_atoms: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` random unit directions over the ``3 n_atoms`` coordinates of a frame.

    Each direction is a Gaussian vector normalised to length one, i.e. uniform on the
    sphere in ``3 n_atoms`` dimensions (so ``E[u uᵀ] = I / (3n)`` and the mean of
    ``|ΔH u|²`` over directions estimates ``|ΔH|²_F / (3n)``).

    Args:
        n_atoms: Atoms in the frame.
        k: Number of directions.
        rng: NumPy generator.

    Returns:
        ``[k, n_atoms, 3]`` float64, each ``[n_atoms, 3]`` slice of unit norm.
    """
    if k < 1:
        raise ValueError(f"the number of Hessian directions must be >= 1, got {k}")
    u = rng.standard_normal((k, n_atoms, 3))
    return u / np.linalg.norm(u.reshape(k, -1), axis=1)[:, None, None]


def checked_directions(directions: np.ndarray, n_atoms: int) -> np.ndarray:
    """``directions`` as float64 ``[K >= 1, n_atoms, 3]``, or a ValueError naming the shape."""
    directions = np.asarray(directions, dtype=np.float64)
    if directions.ndim != 3 or directions.shape[1:] != (n_atoms, 3) or not len(directions):
        raise ValueError(
            f"directions must have shape [K >= 1, {n_atoms}, 3], got {directions.shape}"
        )
    return directions


def resolve_hessian_method(teacher: Any, method: str = "auto") -> str:
    """The method that will be used: ``"autodiff"`` when asked or ``"auto"`` and the
    teacher has ``hessian_vector_products``, else ``"finite-difference"``.

    Raises:
        ValueError: an unknown method, or ``"autodiff"`` for a teacher without it.
    """
    if method not in HESSIAN_METHODS:
        raise ValueError(f"Hessian method must be one of {HESSIAN_METHODS}, got {method!r}")
    has_autodiff = callable(getattr(teacher, "hessian_vector_products", None))
    if method == "autodiff" and not has_autodiff:
        name = getattr(teacher, "name", type(teacher).__name__)
        raise ValueError(
            f"teacher {name} has no autodiff Hessian-vector products; use "
            "--hessian-method finite-difference (or auto)"
        )
    if method == "auto":
        return "autodiff" if has_autodiff else "finite-difference"
    return method


def finite_difference_hvp(
    teacher: Any,
    atoms: ase.Atoms,
    directions: np.ndarray,
    step_angstrom: float = DEFAULT_FD_STEP_ANGSTROM,
) -> np.ndarray:
    """Hessian-vector products by central differences of the teacher's forces.

    The ``2k`` displaced frames go to the teacher in one :meth:`label` call, so teachers
    that batch structures label them together.

    Args:
        teacher: Any :class:`~jaxdistill.teachers.Teacher`.
        atoms: The frame (not modified).
        directions: ``[k, n_atoms, 3]`` directions (any length; unit ones expected).
        step_angstrom: The step ``h`` along each direction, Å.

    Returns:
        ``[k, n_atoms, 3]`` float64, ``H·u`` in eV/Å² (for a unit ``u``).
    """
    if not step_angstrom > 0:
        raise ValueError(f"the finite-difference step must be > 0 Å, got {step_angstrom}")
    directions = np.asarray(directions, dtype=np.float64)
    frames = []
    for u in directions:
        for sign in (1.0, -1.0):
            moved = atoms.copy()
            moved.calc = None
            moved.positions = atoms.positions + sign * step_angstrom * u
            frames.append(moved)
    labels = teacher.label(frames)
    forces = np.stack([np.asarray(lab.forces, dtype=np.float64) for lab in labels])
    plus, minus = forces[0::2], forces[1::2]
    return -(plus - minus) / (2.0 * step_angstrom)


def hessian_vector_products(
    teacher: Any,
    frames: Sequence[ase.Atoms],
    directions: Sequence[np.ndarray],
    method: str = "auto",
    step_angstrom: float = DEFAULT_FD_STEP_ANGSTROM,
) -> list[np.ndarray]:
    """The teacher's ``H·u`` of each frame along its directions.

    Args:
        teacher: The teacher.
        frames: Structures.
        directions: Per frame, ``[k, n_atoms, 3]``.
        method: ``"auto"`` (autodiff when the teacher has it), ``"autodiff"`` or
            ``"finite-difference"``.
        step_angstrom: Step of the finite differences, Å.

    Returns:
        Per frame, ``[k, n_atoms, 3]`` float64 in eV/Å².
    """
    chosen = resolve_hessian_method(teacher, method)
    out = []
    for atoms, u in zip(frames, directions, strict=True):
        if chosen == "autodiff":
            products = teacher.hessian_vector_products(atoms, u)
            products = _finite_or_differences(teacher, atoms, u, products, step_angstrom)
        else:
            products = finite_difference_hvp(teacher, atoms, u, step_angstrom)
        out.append(_checked_shape(teacher, products, u))
    return out


def labels_and_hessian(
    teacher: Any,
    frames: Sequence[ase.Atoms],
    directions: Sequence[np.ndarray],
    method: str = "auto",
    step_angstrom: float = DEFAULT_FD_STEP_ANGSTROM,
    merged: bool = True,
) -> tuple[list[Any], list[np.ndarray]]:
    """The teacher's labels and ``H·u`` of each frame (arguments as
    :func:`hessian_vector_products`).

    With autodiff, a teacher that has ``label_with_hessian(atoms, directions) ->
    (labels, H·u)`` gives both from one evaluation (FeNNol: one linearisation whose
    primal outputs are the energy and forces); otherwise ``teacher.label`` and
    :func:`hessian_vector_products` are called apart (also with ``merged=False``, to
    compare). Same values either way, to the teacher's float rounding.

    Returns:
        ``(labels, products)``: one ``TeacherLabels`` and one ``[k, n_atoms, 3]``
        float64 array (eV/Å²) per frame.
    """
    chosen = resolve_hessian_method(teacher, method)
    both = getattr(teacher, "label_with_hessian", None) if chosen == "autodiff" else None
    if not (merged and callable(both)):
        labels = teacher.label(frames)
        return labels, hessian_vector_products(teacher, frames, directions, method, step_angstrom)
    labels, out = [], []
    for atoms, u in zip(frames, directions, strict=True):
        frame_labels, products = both(atoms, u)
        products = _finite_or_differences(teacher, atoms, u, products, step_angstrom)
        labels.append(frame_labels)
        out.append(_checked_shape(teacher, products, u))
    return labels, out


def _finite_or_differences(
    teacher: Any, atoms: ase.Atoms, u: np.ndarray, products: Any, step_angstrom: float
) -> np.ndarray:
    """Autodiff ``products`` as float64, or central differences where they are not finite."""
    products = np.asarray(products, dtype=np.float64)
    if np.all(np.isfinite(products)):
        return products
    # Seen with FeNNol ANI-1x on one ethanol MD frame in ~30: its forward-over-reverse
    # gives NaN where its forces are finite. Central differences with a small step stand
    # in (ANI's cutoffs make steps of 0.01 Å too coarse there, benchmarks/hvp_fd_step.py).
    warnings.warn(
        f"teacher {getattr(teacher, 'name', teacher)}: autodiff Hessian-vector "
        f"products of a {atoms.get_chemical_formula()} frame are not finite; "
        f"using central differences (step {AUTODIFF_FALLBACK_STEP_ANGSTROM} Å)",
        stacklevel=3,
    )
    return finite_difference_hvp(
        teacher, atoms, u, min(step_angstrom, AUTODIFF_FALLBACK_STEP_ANGSTROM)
    )


def _checked_shape(teacher: Any, products: np.ndarray, u: np.ndarray) -> np.ndarray:
    if products.shape != np.shape(u):
        raise RuntimeError(
            f"teacher {getattr(teacher, 'name', teacher)} returned Hessian-vector products "
            f"of shape {products.shape} for directions of shape {np.shape(u)}"
        )
    return products


def minus_batched_vjp(
    forces: Any,
    positions: Any,
    directions: np.ndarray,
    batched: bool | Mapping[str, bool] = False,
) -> np.ndarray:
    """``-(dF/dR)ᵀ u_k`` for every direction: ``H·u_k``, as H is symmetric (the double
    backward of the torch teachers, SevenNet and Orb conservative).

    Args:
        forces: ``[n, 3]`` torch tensor with a graph to ``positions``, eV/Å.
        positions: ``[n, 3]`` leaf torch tensor, Å.
        directions: ``[K, n, 3]`` float64.
        batched: one vmapped backward pass for all ``K`` directions (True) or one
            backward pass per direction (False), or a table of the two by torch device
            type (``{"cuda": True}``: vmapped on a GPU, one by one elsewhere); which is
            faster depends on the model and the device (docs/data.md). The environment
            variable ``JAXDISTILL_HVP_BATCHED`` (``1``/``0``), when set, overrides it.

    Returns:
        ``[K, n, 3]`` float64 numpy array, eV/Å².
    """
    import torch

    u = torch.as_tensor(directions, dtype=forces.dtype, device=forces.device)
    setting = os.environ.get("JAXDISTILL_HVP_BATCHED", "")
    if setting:
        batched = setting not in ("0", "false", "False")
    elif isinstance(batched, Mapping):
        batched = bool(batched.get(forces.device.type, False))
    grads = None
    if batched and len(u) > 1:
        try:
            (grads,) = torch.autograd.grad(
                forces, positions, grad_outputs=u, is_grads_batched=True, retain_graph=True
            )
        except RuntimeError:
            # Some custom kernels have no vmap rule: one backward pass per direction.
            grads = None
    if grads is None:
        grads = torch.stack(
            [
                torch.autograd.grad(forces, positions, grad_outputs=v, retain_graph=True)[0]
                for v in u
            ]
        )
    return -grads.detach().to(torch.float64).cpu().numpy()
