"""Small float64 students shared by the MD tests (created once per session)."""

from __future__ import annotations

import pytest

from jaxdistill import create_student


@pytest.fixture(scope="session")
def small_student():
    """PaiNN, 16 features, 2 layers, H C O Si, cutoff 4 Å, float64."""
    return create_student(
        "painn",
        ["H", "C", "O", "Si"],
        cutoff=4.0,
        seed=2,
        dtype="float64",
        features=16,
        num_layers=2,
        num_radial=8,
    )


@pytest.fixture(scope="session")
def tiny_student():
    """PaiNN with one layer of 8 features (cheap to compile), H C O Si, cutoff 4 Å, float64,
    with the ZBL repulsion that keeps its random energy surface from pulling atoms onto
    each other within the tests' few hundred steps."""
    return create_student(
        "painn",
        ["H", "C", "O", "Si"],
        cutoff=4.0,
        seed=3,
        dtype="float64",
        features=8,
        num_layers=1,
        num_radial=6,
        repulsion="zbl",
    )
