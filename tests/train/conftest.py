"""Small label stores made by real teachers, shared by the training tests.

Stores are labelled once per session into a temporary folder through the store's own
API (``jaxdistill.labelling.label``): SevenNet-0 on rattled and strained 8-atom
silicon cells (with stress), and FeNNol ANI-1x (one member) on distorted ethanol.
"""

from __future__ import annotations

import contextlib

import pytest
from structures import shared_path
from train_helpers import SI_CONFIG, ethanol_frames, read_metrics, silicon_frames

from jaxdistill.labelling import label
from jaxdistill.train import train


@contextlib.contextmanager
def one_torch_thread():
    """Label with one torch thread: on a busy 2-core machine two threads that spin
    against other processes make SevenNet ~8x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def si_store(tmp_path_factory):
    """48 SevenNet-0-labelled 8-atom Si frames (energies, forces, stress)."""
    pytest.importorskip("sevenn")
    path = tmp_path_factory.mktemp("stores") / "si_sevennet.h5"
    with one_torch_thread():
        label("sevennet:7net-0", silicon_frames(48), path, progress=False)
    return path


@pytest.fixture(scope="session")
def ethanol_store(tmp_path_factory):
    """40 FeNNol ANI-1x-labelled ethanol frames (energies, forces; no stress)."""
    pytest.importorskip("fennol")
    model = shared_path("teachers", "fennol-ani1x", "ani1x_model0.fnx")
    path = tmp_path_factory.mktemp("stores") / "ethanol_ani1x.h5"
    label(f"fennol:{model}", ethanol_frames(40), path, progress=False)
    return path


@pytest.fixture(scope="session")
def si_run(si_store, tmp_path_factory):
    """A 300-step run of a tiny PaiNN on the Si store: (output_dir, student, metrics lines)."""
    output = tmp_path_factory.mktemp("si_run") / "student"
    student = train(si_store, output, SI_CONFIG, progress=False)
    return output, student, read_metrics(output)
