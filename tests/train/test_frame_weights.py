"""Per-frame loss weights from an ensemble teacher's disagreement: weights, batches, the
loss, the config key, and a real training run that must ignore untrusted energies."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from structures import ethanol, silicon
from test_batches import label_arrays
from train_helpers import TINY

from jaxdistill.data.batching import Capacity, frame_atoms, make_batch, precompute_neighbours
from jaxdistill.data.store import LabelStore
from jaxdistill.potential import Prediction
from jaxdistill.train import TrainConfig, train
from jaxdistill.train.loss import LossWeights, disagreement_weights, loss_and_sums, residuals
from jaxdistill.train.reference import fit_head_statistics


def _with_disagreement(labels, values):
    return dataclasses.replace(labels, force_disagreement=np.asarray(values, dtype=float))


def test_weights_follow_inverse_variance_above_the_limit():
    labels = _with_disagreement(
        label_arrays([ethanol(seed=k) for k in range(5)]), [0.2, 2.0, np.nan, 1.0, 4.0]
    )
    weights = disagreement_weights(labels, limit=1.0)
    np.testing.assert_allclose(weights[:, 0], [1, 0, 1, 1, 0])  # energy and stress
    np.testing.assert_allclose(weights[:, 1], [1, 0.25, 1, 1, 1 / 16])  # forces
    assert disagreement_weights(labels, limit=None) is None
    assert disagreement_weights(labels, limit=10.0) is None  # nothing above it
    single = _with_disagreement(labels, [np.nan] * 5)  # a single-model teacher
    assert disagreement_weights(single, limit=0.1) is None


def test_batches_carry_the_weights_and_zero_them_on_padding():
    labels = label_arrays([silicon(seed=1), ethanol(seed=2), ethanol(seed=3)])
    frames = precompute_neighbours(labels, 4.0)
    capacity = Capacity(nodes=64, edges=2048, graphs=4)
    plain = make_batch(frames, [[2, 0, 1]], capacity, stacked=False)
    np.testing.assert_array_equal(plain.energy_weight, [1, 1, 1, 0])
    np.testing.assert_array_equal(plain.force_weight, [1, 1, 1, 0])
    weighted = dataclasses.replace(frames, frame_weights=np.array([[1, 1], [0, 0.5], [1, 0.25]]))
    batch = make_batch(weighted, [[2, 0, 1]], capacity, stacked=False)
    np.testing.assert_array_equal(batch.energy_weight, [1, 1, 0, 0])
    np.testing.assert_array_equal(batch.force_weight, [0.25, 1, 0.5, 0])


def test_loss_scales_each_frames_terms_by_its_weights():
    labels = label_arrays([silicon(seed=1), silicon(seed=2), ethanol(seed=3)])
    frames = precompute_neighbours(labels, 4.0)
    capacity = Capacity(nodes=64, edges=2048, graphs=4)
    rng = np.random.default_rng(0)
    frame_weights = np.array([[1.0, 1.0], [0.0, 0.3], [1.0, 0.5]])
    batch = make_batch(
        dataclasses.replace(frames, frame_weights=frame_weights),
        [[0, 1, 2]],
        capacity,
        np.float64,
        stacked=False,
    )
    prediction = Prediction(
        energy=batch.energy + rng.normal(size=4),
        forces=batch.forces + rng.normal(size=(64, 3)),
        stress=batch.stress + rng.normal(size=(4, 3, 3)),
    )
    totals = {"n_graphs": 3, "n_atoms": int(labels.n_atoms.sum()), "n_stress": 2}
    weights = LossWeights(energy=2.0, forces=3.0, stress=5.0)
    loss, sums = loss_and_sums(prediction, batch, totals, weights)  # x64: tests/conftest.py
    r = jax.tree_util.tree_map(np.asarray, residuals(prediction, batch))
    per_atom = np.repeat(frame_weights[:, 1], labels.n_atoms)
    n_atoms = totals["n_atoms"]
    expected = {
        "energy_loss": 2.0 * np.sum(frame_weights[:, 0] * r["energy"][:3] ** 2) / 3,
        "forces_loss": 3.0 * np.sum(per_atom[:, None] * r["forces"][:n_atoms] ** 2) / (3 * n_atoms),
        "stress_loss": 5.0
        * np.sum(frame_weights[:, 0, None, None] * r["virial"][:3] ** 2)
        / (9 * 2),
    }
    for key, value in expected.items():
        np.testing.assert_allclose(float(sums[key]), value, rtol=1e-10, err_msg=key)
    np.testing.assert_allclose(float(loss), sum(expected.values()), rtol=1e-10)
    # The error sums behind the reported MAEs stay unweighted.
    np.testing.assert_allclose(float(sums["forces_abs"]), np.abs(r["forces"]).sum(), rtol=1e-10)


def test_config_key_is_checked_and_only_written_when_set():
    assert "force_disagreement_limit" not in TrainConfig().to_dict()
    assert TrainConfig(force_disagreement_limit=1.0).to_dict()["force_disagreement_limit"] == 1.0
    with pytest.raises(ValueError, match="force_disagreement_limit must be > 0"):
        TrainConfig(force_disagreement_limit=0.0)


def test_training_ignores_the_energies_of_untrusted_frames(ethanol_store, tmp_path):
    """Real ANI-1x labels; four frames get a wild energy (+50 eV) and a large disagreement.
    The reference energies must be fitted without them and they train on forces alone."""
    with LabelStore(ethanol_store) as source:
        arrays = source.arrays()
        frames = [frame_atoms(arrays, i) for i in range(arrays.n_frames)]
    untrusted = [0, 5, 10, 15]
    from jaxdistill.teachers.base import TeacherLabels

    labels = []
    for i in range(arrays.n_frames):
        lo, hi = arrays.offsets[i], arrays.offsets[i + 1]
        labels.append(
            TeacherLabels(
                energy=float(arrays.energy[i]) + (50.0 if i in untrusted else 0.0),
                forces=arrays.forces[lo:hi],
                stress=np.full(6, np.nan),
                force_disagreement=4.0 if i in untrusted else 0.2,
                energy_disagreement=0.01,
            )
        )
    path = tmp_path / "ensemble.h5"
    with LabelStore.create(path, teacher={"name": "ensemble"}) as store:
        store.append(frames, labels)
    config = {
        **TINY,
        "steps": 2,
        "validation_interval": 2,
        "split": {"train": 1.0},
        "force_disagreement_limit": 1.0,
    }
    student = train(path, tmp_path / "student", config, progress=False)
    split = student.metadata["split"]
    assert split["forces_only_frames"] == len(untrusted)
    trusted = [i for i in range(arrays.n_frames) if i not in untrusted]
    with LabelStore(path) as store:
        expected = fit_head_statistics(store.arrays(trusted), student.species).as_metadata()
    fitted = student.metadata["head_statistics"]["reference_energies_eV"]
    for symbol, energy in expected["reference_energies_eV"].items():
        assert fitted[symbol] == pytest.approx(energy, rel=1e-9), symbol
