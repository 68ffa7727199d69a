"""Student architectures: Flax modules mapping a graph's edges to per-atom energies.

Every student has the call signature
``module.apply(params, numbers, edge_vectors, senders, receivers, node_mask, edge_mask)
-> per-atom energies [n_node]`` (eV), so that potential.py and the jax-md adapter can
compute forces and stress for all of them in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn

from jaxdistill.models.painn import PaiNN
from jaxdistill.models.repulsion import check_repulsion
from jaxdistill.models.schnet import SchNet

ARCHITECTURES: dict[str, type[nn.Module]] = {"painn": PaiNN, "schnet": SchNet}
DEFAULT_ARCHITECTURE = "painn"


def register_architecture(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator adding a student architecture to the registry under ``name``."""

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        ARCHITECTURES[name] = cls
        return cls

    return decorator


def build_model(architecture: str, species: Sequence[int], cutoff: float, **hyper) -> nn.Module:
    """Instantiate a registered architecture; unknown names or options raise ValueError."""
    try:
        cls = ARCHITECTURES[architecture]
    except KeyError:
        raise ValueError(
            f"unknown architecture {architecture!r}; registered: {sorted(ARCHITECTURES)}"
        ) from None
    allowed = set(cls.__dataclass_fields__) - {"species", "cutoff", "parent", "name"}
    unknown = set(hyper) - allowed
    if unknown:
        raise ValueError(
            f"unknown hyper-parameter(s) {sorted(unknown)} for {architecture!r}; "
            f"allowed: {sorted(allowed)}"
        )
    if "repulsion" in hyper:
        hyper["repulsion"] = check_repulsion(hyper["repulsion"])
    return cls(species=tuple(int(z) for z in species), cutoff=float(cutoff), **hyper)


__all__ = ["ARCHITECTURES", "DEFAULT_ARCHITECTURE", "PaiNN", "SchNet", "build_model"]
