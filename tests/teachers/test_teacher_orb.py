"""Orb through orb-models' official loader, fed locally saved (random) Orb-v3 weights.

There is no internet here, so the tests build the Orb-v3 architecture, save its random
weights with torch.save(model.state_dict()), and load them with
``orb:<name>@/path/weights.ckpt`` — the same pretrained loader a user's ``orb:<name>``
goes through. The named loaders fix the full architecture, so the weights are
full-size (about 25M parameters).
"""

from __future__ import annotations

import ase
import ase.build
import numpy as np
import pytest

from jaxdistill.data import LabelStore
from jaxdistill.labelling import label
from jaxdistill.teachers import load_teacher

torch = pytest.importorskip("torch", reason="torch not installed (pip install 'jaxdistill[orb]')")
pytest.importorskip("orb_models", reason="orb-models not installed (pip install 'jaxdistill[orb]')")

CONSERVATIVE = "orb-v3-conservative-inf-omat"
DIRECT = "orb-v3-direct-20-omat"


@pytest.fixture(scope="module")
def orb_weights(tmp_path_factory):
    """Random full-size Orb-v3 weights, conservative and direct, saved to disk."""
    from orb_models.forcefield import pretrained

    folder = tmp_path_factory.mktemp("orb")
    paths = {}
    dtype = torch.get_default_dtype()
    for kind, build in (
        ("conservative", pretrained.orb_v3_conservative_architecture),
        ("direct", pretrained.orb_v3_direct_architecture),
    ):
        torch.manual_seed(0)
        model = build(device="cpu")
        paths[kind] = folder / f"orb-v3-{kind}-random.ckpt"
        torch.save(model.state_dict(), paths[kind])
    assert torch.get_default_dtype() == dtype
    return paths


@pytest.fixture(scope="module")
def conservative(orb_weights):
    return load_teacher(f"orb:{CONSERVATIVE}@{orb_weights['conservative']}")


@pytest.fixture(scope="module")
def direct(orb_weights):
    return load_teacher(f"orb:{DIRECT}@{orb_weights['direct']}")


def frames() -> list[ase.Atoms]:
    out = []
    for seed, cubic in ((0, False), (1, True)):
        atoms = ase.build.bulk("Si", "diamond", a=5.43, cubic=cubic)
        atoms.rattle(0.05, seed=seed)
        out.append(atoms)
    molecule = ase.build.molecule("CH3OH")
    molecule.rattle(0.03, seed=2)
    out.append(molecule)
    return out


def official_calculator(name, weights):
    """ORBCalculator around a model loaded by orb-models' own pretrained loader."""
    from orb_models.forcefield import pretrained

    dtype = torch.get_default_dtype()
    try:
        loaded = pretrained.ORB_PRETRAINED_MODELS[name](
            weights_path=str(weights), device="cpu", compile=False
        )
        if isinstance(loaded, tuple):  # orb-models >= 0.6: (model, atoms_adapter)
            from orb_models.forcefield.inference.calculator import ORBCalculator

            return ORBCalculator(*loaded, device="cpu")
        from orb_models.forcefield.calculator import ORBCalculator

        return ORBCalculator(loaded, device="cpu")
    finally:
        torch.set_default_dtype(dtype)


@pytest.mark.parametrize("kind", ["conservative", "direct"])
def test_store_labels_equal_orb_calculator(kind, orb_weights, request, tmp_path):
    teacher = request.getfixturevalue(kind)
    name = CONSERVATIVE if kind == "conservative" else DIRECT
    structures = frames()
    label(teacher, structures, tmp_path / "orb.h5", progress=False)
    calc = official_calculator(name, orb_weights[kind])
    with LabelStore(tmp_path / "orb.h5") as store:
        assert len(store) == len(structures)
        for atoms, stored in zip(structures, store, strict=True):
            ref = atoms.copy()
            ref.calc = calc
            assert stored.get_potential_energy() == pytest.approx(
                ref.get_potential_energy(), abs=1e-4
            )
            np.testing.assert_allclose(stored.get_forces(), ref.get_forces(), atol=1e-4)
            if all(atoms.pbc):
                np.testing.assert_allclose(stored.get_stress(), ref.get_stress(), atol=1e-5)
            else:
                assert "stress" not in stored.calc.results
        prov = store.teacher
    assert prov["conservative"] == (kind == "conservative")
    assert prov["model_name"] == name and prov["package"] == "orb-models"
    assert prov["weights_sha256"] == [
        __import__("hashlib").sha256(orb_weights[kind].read_bytes()).hexdigest()
    ]


def test_loading_restores_torch_default_dtype(orb_weights):
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        teacher = load_teacher(f"orb:{DIRECT}@{orb_weights['direct']}", precision="float32-high")
        assert torch.get_default_dtype() == torch.float64
        # Labelling still works (graphs are built in the model's dtype) and restores too.
        lab = teacher.label(frames()[:1])[0]
        assert np.all(np.isfinite(lab.forces))
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(before)


def test_batched_calls_equal_single_calls(conservative):
    structures = [*frames(), frames()[1]]
    structures[-1].rattle(0.02, seed=9)
    try:
        conservative.batch_size = 1
        single = conservative.label(structures)
        conservative.batch_size = 4
        batched = conservative.label(structures)
    finally:
        conservative.batch_size = 8
    for a, b in zip(single, batched, strict=True):
        assert a.energy == pytest.approx(b.energy, abs=1e-4)
        np.testing.assert_allclose(a.forces, b.forces, atol=1e-4)
        np.testing.assert_allclose(a.stress, b.stress, atol=1e-5)


def test_conservative_stress_matches_finite_differences(conservative, fd_stress):
    atoms = frames()[0]
    # The 12 strained cells go through Orb in batches of 8.
    expected = fd_stress(lambda fs: [x.energy for x in conservative.label(fs)], atoms, delta=5e-3)
    # float32 energies of ~10 eV: finite differences resolve ~1e-4 eV/Å³ here.
    np.testing.assert_allclose(conservative.label([atoms])[0].stress, expected, atol=5e-4)


def test_orb_errors_are_clear(orb_weights, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_teacher(f"orb:{DIRECT}@{tmp_path / 'missing.ckpt'}")
    with pytest.raises(ValueError, match="unknown Orb model"):
        load_teacher(f"orb:orb-v9-imaginary@{orb_weights['direct']}")
    # Weights with a tensor of the wrong shape do not fit. (With orb-models 0.5 the
    # direct weights do not fit the conservative architecture either; with 0.7 they
    # load, strictly: there the two architectures hold the same tensors.)
    state = torch.load(orb_weights["direct"], map_location="cpu", weights_only=True)
    name = next(k for k, v in state.items() if k.endswith("weight") and v.ndim == 2)
    state[name] = state[name][:-1]
    torch.save(state, tmp_path / "misshapen.ckpt")
    with pytest.raises(RuntimeError, match="do not fit"):
        load_teacher(f"orb:{DIRECT}@{tmp_path / 'misshapen.ckpt'}")


#: Names orb-models 0.7 added: OrbMol-v1 (the OMol25 Orb-v3 models under a new name) and
#: OrbMol-v2 (a new architecture with learnable charges and Coulomb electrostatics).
NAMES_NEW_IN_ORB_07 = ("orbmol-v1-conservative", "orbmol-v2")


@pytest.mark.parametrize("name", NAMES_NEW_IN_ORB_07)
def test_models_new_in_orb_07_label_like_their_calculator(name, tmp_path, monkeypatch):
    import importlib.metadata

    from orb_models.forcefield import pretrained

    if name not in pretrained.ORB_PRETRAINED_MODELS:
        pytest.skip(
            f"{name} comes with orb-models >= 0.7 (Python >= 3.12); this environment has "
            f"orb-models {importlib.metadata.version('orb-models')}"
        )
    # Random full-size weights of the architecture the named loader builds: run the
    # loader with its weight loading switched off and save what it built.
    dtype = torch.get_default_dtype()
    with monkeypatch.context() as patch:
        patch.setattr(pretrained, "load_model", lambda model, *args, **kwargs: model)
        torch.manual_seed(0)
        model, _ = pretrained.ORB_PRETRAINED_MODELS[name](device="cpu", compile=False)
    torch.set_default_dtype(dtype)
    weights = tmp_path / f"{name}-random.ckpt"
    torch.save(model.state_dict(), weights)

    molecule = ase.build.molecule("CH3CH2OH")
    molecule.rattle(0.03, seed=3)
    molecule.info.update(charge=0, spin=1)
    teacher = load_teacher(f"orb:{name}@{weights}")
    label(teacher, [molecule], tmp_path / "orbmol.h5", progress=False)
    reference = molecule.copy()
    reference.calc = official_calculator(name, weights)
    with LabelStore(tmp_path / "orbmol.h5") as store:
        stored = store[0]
        assert stored.get_potential_energy() == pytest.approx(
            reference.get_potential_energy(), abs=1e-4
        )
        np.testing.assert_allclose(stored.get_forces(), reference.get_forces(), atol=1e-4)
        assert store.teacher["model_name"] == name
