"""Blow-up checks shared by both MD engines (the thresholds are
:class:`~jaxdistill.md.types.StabilityRules`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import ase
import ase.io

from jaxdistill.md.topology import bonded_fragments
from jaxdistill.md.types import MDInstabilityError, MDSummary


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
) -> None:
    """Save the last good frame(s) of the bad replicas and raise
    :class:`MDInstabilityError` carrying them and ``summary()`` (the run so far)."""
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
    message = (
        f"MD became unstable at step {step}{which}: {reason}. The last good frame is "
        f"step {last_step}" + (f", saved to {saved}" if saved else "") + ". Try a smaller "
        "timestep, check the starting structure, or the student may be unreliable for "
        "these configurations (more training data there)."
    )
    raise MDInstabilityError(
        message,
        step=step,
        last_good_step=last_step,
        atoms=last_good if len(last_good) > 1 else last_good[0],
        path=saved,
        replicas=bad_replicas,
        reason=reason,
        summary=summary() if summary is not None else None,
    )
