"""Shared fixtures: small real structures and small random students in float64."""

from __future__ import annotations

import jax
import pytest

# Numbers are compared in float64; float32 paths are still exercised where a test
# asks for dtype="float32" explicitly.
jax.config.update("jax_enable_x64", True)

from structures import SPECIES  # noqa: E402

from jaxdistill import create_student  # noqa: E402
from jaxdistill.models import ARCHITECTURES  # noqa: E402


@pytest.fixture(scope="session", params=sorted(ARCHITECTURES))
def student64(request):
    """A small random student of each architecture, float64."""
    return create_student(
        request.param,
        SPECIES,
        cutoff=4.0,
        seed=1,
        dtype="float64",
        features=16,
        num_layers=2,
        num_radial=8,
    )
