"""Creating, saving and loading students."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from structures import ethanol, silicon

import jaxdistill
from jaxdistill import create_student, load_student


@pytest.mark.parametrize("architecture", ["painn", "schnet"])
def test_save_load_round_trip_is_exact(tmp_path, architecture):
    student = create_student(
        architecture, ["Si", "O", "H", "C"], cutoff=4.5, seed=3, features=16, num_layers=2
    )
    student.metadata["note"] = "round trip"
    path = student.save(tmp_path / "student")
    loaded = load_student(path)
    assert loaded.config() == student.config()
    leaves, tree = jax.tree_util.tree_flatten(student.params)
    loaded_leaves, loaded_tree = jax.tree_util.tree_flatten(loaded.params)
    assert tree == loaded_tree
    for a, b in zip(leaves, loaded_leaves, strict=True):
        assert np.asarray(a).dtype == np.asarray(b).dtype
        assert np.array_equal(np.asarray(a), np.asarray(b))
    atoms = [ethanol(), silicon()]
    assert np.array_equal(
        np.asarray(student.predict(atoms).forces), np.asarray(loaded.predict(atoms).forces)
    )
    config = json.loads((path / "student.json").read_text())
    assert config["species"] == [1, 6, 8, 14] and config["symbols"] == ["H", "C", "O", "Si"]
    assert config["jaxdistill_version"] == jaxdistill.__version__
    assert config["cutoff_angstrom"] == 4.5 and config["dtype"] == "float32"
    expected = {"features": 16, "num_layers": 2}
    if architecture == "painn":  # new PaiNN students record their smooth vector norm
        expected["norm_softening"] = 1.0
    assert config["hyperparameters"] == expected


def test_save_overwrites_and_refuses(tmp_path):
    student = create_student("schnet", ["Si"], cutoff=4.0, features=8, num_layers=1)
    student.save(tmp_path / "s")
    student.save(tmp_path / "s")  # overwrite by default
    with pytest.raises(FileExistsError):
        student.save(tmp_path / "s", overwrite=False)
    assert not (tmp_path / "s.partial").exists()


def test_load_float64_override(tmp_path):
    student = create_student("schnet", ["Si"], cutoff=4.0, features=8, num_layers=1)
    loaded = load_student(student.save(tmp_path / "s"), dtype="float64")
    assert loaded.dtype == "float64"
    assert all(np.asarray(x).dtype == np.float64 for x in jax.tree_util.tree_leaves(loaded.params))


def test_clear_errors():
    with pytest.raises(ValueError, match="unknown architecture 'mace'.*painn"):
        create_student("mace", ["Si"], cutoff=5.0)
    with pytest.raises(ValueError, match="unknown hyper-parameter.*'layers'"):
        create_student("painn", ["Si"], cutoff=5.0, layers=3)
    with pytest.raises(ValueError, match="unknown element symbol 'Xx'"):
        create_student("painn", ["Xx"], cutoff=5.0)
    with pytest.raises(ValueError, match="cutoff"):
        create_student("painn", ["Si"], cutoff=0.0)
    student = create_student("painn", ["Si"], cutoff=5.0, features=8, num_layers=1)
    with pytest.raises(ValueError, match=r"element\(s\) H, C, O unknown to this student"):
        student.predict(ethanol())
    with pytest.raises(FileNotFoundError, match="not a jaxdistill student"):
        load_student("/nonexistent/student")


def test_species_given_as_numbers_or_symbols():
    a = create_student("schnet", [14, 8], cutoff=4.0, features=8, num_layers=1)
    b = create_student("schnet", ["O", "Si", "O"], cutoff=4.0, features=8, num_layers=1)
    assert a.species == b.species == (8, 14)
    assert a.symbols == ["O", "Si"]
