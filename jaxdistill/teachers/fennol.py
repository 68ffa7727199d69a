"""FeNNol / FeNNix teachers (``fennol:/path/model.fnx``), through ``fennol.ase.FENNIXCalculator``.

Several comma-separated paths, or a glob, make an ensemble: labels are the members'
mean and the per-structure disagreement is returned (see
:func:`jaxdistill.teachers.base.combine_ensemble`). The calculator converts the
model's energy unit (Hartree for ANI-1x) to eV.

fennol is imported only inside :func:`load_fennol_teacher`.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import ase
import numpy as np

from jaxdistill.teachers.ase import AseTeacher
from jaxdistill.teachers.base import (
    NAN_STRESS,
    EnsembleTeacher,
    Teacher,
    TeacherLabels,
    check_file,
    file_sha256,
    package_version,
    require_package,
    wants_stress,
)
from jaxdistill.teachers.hessian import checked_directions

__all__ = ["FennolTeacher", "expand_fennol_paths", "load_fennol_teacher"]


class FennolTeacher(AseTeacher):
    """One FeNNol model behind ``FENNIXCalculator``.

    By default the calculator preprocesses every structure from scratch on the host
    (see ``_load_one`` for why). With ``gpu_preprocessing=True`` it keeps
    neighbour-list capacities from the previous structure and updates them
    incrementally; the carried-over state can then be too small (upstream raises
    ``max_neigh*nat < nedge``) when a structure with different atoms follows, and
    sometimes along one hot trajectory. So the preprocessing state is reset whenever
    the atomic numbers or periodicity change, and a call that raises that error is
    redone from a fresh state.
    """

    def __init__(self, calculator: Any, **kwargs: Any) -> None:
        super().__init__(calculator, **kwargs)
        self._signature: tuple[Any, ...] | None = None
        # Preprocessing state (padded sizes of the neighbour lists) per system: FeNNol's
        # jitted model compiles once per padded shape, and a state rebuilt for every
        # change of molecule gives new shapes again and again (41 compilations for 60
        # frames of three alternating molecules on a CPU, 194 ms a frame).
        self._states: dict[tuple[Any, ...], Any] = {}
        self._hvp_fn: Any = None

    def hessian_vector_products(self, atoms: ase.Atoms, directions: np.ndarray) -> np.ndarray:
        """``H·u`` for each direction ``u`` by forward-over-reverse autodiff in JAX.

        ``H = d²E/dR²`` is the Hessian of the total energy (the calculator's energy
        terms) with respect to the Cartesian positions at ``atoms``. The structure is
        preprocessed as ``FENNIXCalculator`` does it (host neighbour list, kept fixed);
        the model's pure energy function of the coordinates is differentiated once
        (``jax.grad``), linearised at ``R`` (``jax.linearize``) and the linear map is
        applied to all ``K`` directions (``jax.vmap``), in one jitted call (compiled
        once per neighbour-list shape). The result is converted from the model's
        energy unit (Hartree for ANI-1x) to eV, as the calculator converts energies.

        Precision: that of the calculator (float32 by default, float64 with
        ``use_float64=True``).

        Args:
            atoms: The structure (not modified).
            directions: ``[K, n_atoms, 3]`` float64, each a unit vector over the
                ``3 n_atoms`` coordinates (dimensionless).

        Returns:
            ``[K, n_atoms, 3]`` float64, ``H·u_k`` in eV/Å².
        """
        return self._energy_forces_hvp(atoms, directions)[2]

    def label_with_hessian(
        self, atoms: ase.Atoms, directions: np.ndarray
    ) -> tuple[TeacherLabels, np.ndarray]:
        """Labels and ``H·u`` of one structure from one preprocessing and one
        linearisation: the energy and forces are the primal outputs of the same
        ``jax.linearize`` whose linear map gives the products (see
        :meth:`hessian_vector_products`), instead of a label call beside it.

        A structure that wants a stress label (periodic in all three directions) takes
        the two separate calls instead.

        Returns:
            ``(labels, H·u [K, n_atoms, 3] float64 eV/Å²)``.
        """
        if wants_stress(atoms):
            return self.label([atoms])[0], self.hessian_vector_products(atoms, directions)
        energy, forces, hvp = self._energy_forces_hvp(atoms, directions)
        return TeacherLabels(energy=energy, forces=forces, stress=NAN_STRESS.copy()), hvp

    def _energy_forces_hvp(
        self, atoms: ase.Atoms, directions: np.ndarray
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """``(energy eV, forces [n, 3] eV/Å, H·u [K, n, 3] eV/Å²)`` from one jitted call
        (compiled once per neighbour-list shape, whichever of the two asks)."""
        import jax.numpy as jnp

        directions = checked_directions(directions, len(atoms))
        calc = self.calculator
        work = atoms.copy()
        work.calc = None
        self._before_call(work)
        # Preprocess from scratch on the host (the incremental path can be wrong, see
        # _load_one), then drop the calculator's cached inputs so that its next call
        # preprocesses its own structure again instead of updating these.
        calc._raw_inputs = None
        try:
            inputs = dict(calc.preprocess(work))
        finally:
            calc.reset()
            calc._raw_inputs = None
            calc._fennol_inputs = None
        inputs["total_charge"] = int(work.get_initial_charges().sum())
        coordinates = inputs["coordinates"]
        tangents = directions
        true_atoms = inputs.get("true_atoms")
        real = slice(None)
        if coordinates.shape[0] != len(work):
            # Atom padding: zero tangent on the padding atoms, dropped afterwards.
            real = np.asarray(true_atoms, dtype=bool)
            tangents = np.zeros((len(directions), coordinates.shape[0], 3))
            tangents[:, real] = directions
        if self._hvp_fn is None:
            self._hvp_fn = _fennol_hvp_function(calc.model._total_energy_raw)
        value, gradient, products = self._hvp_fn(
            calc.model.variables, inputs, jnp.asarray(tangents, dtype=coordinates.dtype)
        )
        energy = float(value) * calc.energy_conv
        forces = -np.asarray(gradient, dtype=np.float64)[real] * calc.energy_conv
        hvp = np.asarray(products, dtype=np.float64)[:, real] * calc.energy_conv
        return energy, forces, hvp

    def _before_call(self, atoms: ase.Atoms) -> None:
        signature = (atoms.numbers.tobytes(), tuple(bool(p) for p in atoms.pbc))
        if signature != self._signature:
            model = self.calculator.model
            if self._signature is not None and model.preproc_state is not None:
                self._states[self._signature] = model.preproc_state
            self._reset_preprocessing(self._states.get(signature))
            self._signature = signature

    def _reset_preprocessing(self, state: Any = None) -> None:
        """Forget the calculator's cached inputs, so the next call preprocesses its
        structure from scratch on the host, and start from ``state`` (the sizes this
        system had before, so its shapes, and compilations, are reused) or, without
        one, from a fresh preprocessing state."""
        calc = self.calculator
        calc.reset()
        calc._raw_inputs = None
        calc._fennol_inputs = None
        if state is None:
            calc.model.reinitialize_preprocessing()
        else:
            # FENNIX is a frozen dataclass; its own preprocess() sets the state this way
            object.__setattr__(calc.model, "preproc_state", state)

    def _label_one(self, atoms: ase.Atoms) -> TeacherLabels:
        try:
            return super()._label_one(atoms)
        except ValueError as error:
            # The incremental update can also fall behind along one MD trajectory when
            # a molecule's neighbour count grows (seen at 600 K after thousands of
            # steps); a from-scratch preprocessing of the same structure is correct.
            if "max_neigh" not in str(error):
                raise
            self._reset_preprocessing()
            return super()._label_one(atoms)


def _fennol_hvp_function(total_energy: Any) -> Any:
    """Jitted ``(variables, inputs, tangents [K, n, 3]) -> (energy, gradient [n, 3],
    H·t [K, n, 3])``, in the model's energy unit (the gradient per Å, the Hessian
    products per Å²).

    Args:
        total_energy: FENNIX's ``_total_energy_raw(variables, inputs) -> (energies
            [n_systems], outputs)``, in the model's energy unit.
    """
    import jax

    def hvp(variables: Any, inputs: dict[str, Any], tangents: Any) -> Any:
        def energy(x: Any) -> Any:
            return total_energy(variables, {**inputs, "coordinates": x})[0].sum()

        # Linearise the gradient once (its primal outputs are the energy and the
        # gradient themselves); the K tangents reuse its residuals.
        (value, gradient), linear = jax.linearize(jax.value_and_grad(energy), inputs["coordinates"])
        products = jax.vmap(lambda t: linear(t)[1])(tangents)
        return value, gradient, products

    return jax.jit(hvp)


def expand_fennol_paths(body: str) -> list[Path]:
    """Expand ``a.fnx,b.fnx`` or ``models/*.fnx`` into a sorted, existing list of files.

    Raises:
        FileNotFoundError: A path or a glob that matches nothing.
    """
    paths: list[Path] = []
    for part in (p.strip() for p in body.split(",")):
        if not part:
            continue
        expanded = str(Path(part).expanduser())
        if any(ch in expanded for ch in "*?["):
            matches = sorted(glob.glob(expanded))
            if not matches:
                raise FileNotFoundError(f"FeNNol model glob matched no file: {expanded}")
            paths.extend(Path(m) for m in matches)
        else:
            paths.append(check_file(expanded, "FeNNol model file"))
    if not paths:
        raise ValueError(f"no FeNNol model path in spec fennol:{body!r}")
    return paths


def _load_one(path: Path, device: str, use_float64: bool, **kwargs: Any) -> FennolTeacher:
    fennol_ase = require_package("fennol.ase", extra="fennol", distribution="fennol")
    # fennol 2026.6.29's incremental ("GPU") preprocessing returns wrong labels at some
    # steps of an MD trajectory (ANI-1x ethanol, 0.5 fs: forces off by up to 1.0 eV/Å,
    # energy by 0.3 eV, against a from-scratch evaluation), and raises
    # ``max_neigh*nat < nedge`` at others. Host preprocessing of every structure is
    # always right and, for molecules, no slower; pass gpu_preprocessing=True (e.g. in
    # teacher_options) to opt back in for large periodic systems.
    kwargs.setdefault("gpu_preprocessing", False)
    calculator = fennol_ase.FENNIXCalculator(str(path), use_float64=use_float64, **kwargs)
    provenance = {
        "spec": f"fennol:{path}",
        "package": "fennol",
        "version": package_version("fennol"),
        "weights": [str(path)],
        "weights_sha256": [file_sha256(path)],
        "precision": "float64" if use_float64 else "float32",
        "device": device,
        "model_energy_unit": str(getattr(calculator.model, "energy_unit", "unknown")),
        "cutoff_angstrom": float(getattr(calculator.model, "cutoff", np.nan)),
    }
    return FennolTeacher(calculator, name=path.stem, device=device, provenance=provenance)


def load_fennol_teacher(
    body: str,
    device: str = "cpu",
    use_float64: bool = False,
    **kwargs: Any,
) -> Teacher:
    """Load one FeNNol model, or an ensemble of several.

    Args:
        body: The part after ``fennol:``: a ``.fnx`` path, comma-separated paths, or a
            glob (``/models/ani1x_model*.fnx``). More than one file = an ensemble.
        device: Recorded in the provenance; FeNNol runs on JAX's default device.
        use_float64: Evaluate the model in float64 (note: FENNIXCalculator then turns on
            ``jax_enable_x64`` process-wide).
        **kwargs: Passed to ``FENNIXCalculator`` (``gpu_preprocessing`` defaults to
            False here: see ``_load_one``).

    Returns:
        A :class:`FennolTeacher`, or an :class:`EnsembleTeacher` of them.
    """
    # Check the package before the files: installing it is the first thing to fix.
    require_package("fennol.ase", extra="fennol", distribution="fennol")
    paths = expand_fennol_paths(body)
    members = [_load_one(p, device, use_float64, **kwargs) for p in paths]
    if len(members) == 1:
        return members[0]
    return EnsembleTeacher(
        members,
        name=f"{members[0].name}-ensemble{len(members)}",
        provenance={
            "spec": f"fennol:{body}",
            "package": "fennol",
            "version": package_version("fennol"),
        },
    )
