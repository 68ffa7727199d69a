"""Blow-up checks shared by both MD engines (the thresholds are
:class:`~jaxdistill.md.types.StabilityRules`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import ase
import ase.io
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator

from jaxdistill.md.topology import bonded_fragments
from jaxdistill.md.types import MDInstabilityError, MDSummary, MDUncertaintyError, UncertaintyRule


class FragmentCheck:
    """Flags replicas whose covalently bonded pieces outnumber the start's.

    A molecule that breaks apart in vacuum keeps its temperature, so the temperature
    limit cannot see it; a rising piece count can.
    """

    def __init__(self, factor: float | None, first: Sequence[ase.Atoms]) -> None:
        self.factor = factor
        self.baseline = [bonded_fragments(f, factor) for f in first] if factor else []

    def __call__(self, frames: Sequence[ase.Atoms]) -> tuple[str | None, list[int]]:
        if not self.factor:
            return None, []
        counts = [bonded_fragments(f, self.factor) for f in frames]
        bad = [k for k, (n, n0) in enumerate(zip(counts, self.baseline, strict=True)) if n > n0]
        if not bad:
            return None, []
        k = bad[0]
        return (
            f"the structure broke apart: {counts[k]} covalently bonded pieces where the start "
            f"had {self.baseline[k]} (bonded = closer than {self.factor:g} x the sum of "
            "covalent radii)",
            bad,
        )


def raise_blowup(
    reason: str,
    step: int,
    last_good: list[ase.Atoms],
    bad_replicas: list[int],
    path: Path | None,
    summary: Callable[[], MDSummary] | None = None,
    uncertain: list[ase.Atoms] | None = None,
    uncertain_path: Path | None = None,
) -> None:
    """Save the last good frame(s) of the bad replicas and raise
    :class:`MDInstabilityError` carrying them and ``summary()`` (the run so far); with
    ``uncertain`` (the samples above a committee's disagreement threshold, already
    written to ``uncertain_path``) raise :class:`MDUncertaintyError` instead."""
    last_step = int(last_good[bad_replicas[0]].info.get("step", 0))
    saved = None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        frames = [last_good[k] for k in bad_replicas]
        ase.io.write(path, frames, format="extxyz")
        saved = path
    which = (
        f" in replica(s) {bad_replicas[:10]}{'...' if len(bad_replicas) > 10 else ''}"
        if len(last_good) > 1
        else ""
    )
    details = {
        "step": step,
        "last_good_step": last_step,
        "atoms": last_good if len(last_good) > 1 else last_good[0],
        "path": saved,
        "replicas": bad_replicas,
        "reason": reason,
        "summary": summary() if summary is not None else None,
    }
    if uncertain is not None:
        message = (
            f"MD stopped at step {step}{which}: {reason}. The students do not know this "
            "configuration: label "
            + (f"the frame(s) saved to {uncertain_path}" if uncertain_path else "it")
            + " with the teacher and train on them (active learning). The last good "
            f"frame is step {last_step}" + (f", saved to {saved}" if saved else "") + "."
        )
        raise MDUncertaintyError(
            message, **details, uncertain=uncertain, uncertain_path=uncertain_path
        )
    message = (
        f"MD became unstable at step {step}{which}: {reason}. The last good frame is "
        f"step {last_step}" + (f", saved to {saved}" if saved else "") + ". Try a smaller "
        "timestep, check the starting structure, or the student may be unreliable for "
        "these configurations (more training data there)."
    )
    raise MDInstabilityError(message, **details)


class UncertaintyCheck:
    """A committee's disagreement at every checked sample, against the run's
    :class:`~jaxdistill.md.types.UncertaintyRule` (if any): samples above its threshold
    are written to the rule's file (extxyz, appended as they come, so a killed run keeps
    them) and kept in ``frames``.

    Args:
        rule: the rule, or None (nothing is compared; nothing written).
    """

    def __init__(self, rule: UncertaintyRule | None):
        self.rule = rule
        self.path = rule.path if rule is not None else None
        self.frames: list[ase.Atoms] = []
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")  # a rerun starts a fresh file

    def __call__(
        self, frames: Sequence[ase.Atoms], max_force_std: np.ndarray
    ) -> tuple[str | None, list[int], list[ase.Atoms]]:
        """Check one sample of every replica (frames with ``force_std``).

        Returns:
            ``(reason, bad replicas, uncertain frames)``: a reason only when the rule
            says "stop" and a replica passed the threshold; the frames above it in
            both modes (already written and kept).
        """
        if self.rule is None:
            return None, [], []
        bad = self.rule.exceeded(max_force_std)
        if not bad:
            return None, [], []
        uncertain = []
        for k in bad:
            frame = frames[k].copy()  # copy() drops the calculator: labels carried over
            frame.calc = SinglePointCalculator(frame, **frames[k].calc.results)
            frame.info["replica"] = k
            uncertain.append(frame)
        if self.path is not None:
            ase.io.write(self.path, uncertain, format="extxyz", append=True)
        self.frames.extend(uncertain)
        if self.rule.action != "stop":
            return None, [], uncertain
        values = np.atleast_1d(max_force_std)
        return (
            f"the student committee disagrees: a per-atom force standard deviation of "
            f"{float(np.max(values[bad])):.4g} eV/Å exceeds uncertainty_threshold "
            f"{self.rule.threshold_ev_per_angstrom:g} eV/Å",
            bad,
            uncertain,
        )
