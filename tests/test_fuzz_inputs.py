"""Property-based fuzz of the input readers (hypothesis, small budget in CI).

Whatever the bytes, the extxyz and YAML readers either read the input or raise a
ValueError / FileNotFoundError with a message (what the CLI prints as one line), never
another exception; ``graph_from_atoms`` on random cells and positions either refuses
the structure with a ValueError or gives a graph whose edges are real pairs within the
cutoff. ``JAXDISTILL_FUZZ_EXAMPLES`` raises the budget for a longer local run.
"""

from __future__ import annotations

import os
from pathlib import Path

import ase
import ase.build
import ase.io
import numpy as np
import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EXAMPLES = int(os.environ.get("JAXDISTILL_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # CI sees the same examples every run
)
USER_ERRORS = (ValueError, FileNotFoundError)


def _valid_extxyz(tmp_path: Path) -> str:
    atoms = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.05, seed=0)
    path = tmp_path / "seed.extxyz"
    ase.io.write(path, [atoms, atoms], format="extxyz")
    return path.read_text()


@st.composite
def mutated_text(draw, base: str) -> str:
    """``base`` with a few random cuts, insertions and replacements."""
    text = base
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["cut", "insert", "truncate", "replace"]))
        piece = draw(st.text(alphabet=" \n0123456789.-eE+=:\"'abcxyzTF[]{}", max_size=12))
        if action == "cut":
            text = text[:position] + text[position + draw(st.integers(1, 20)) :]
        elif action == "insert":
            text = text[:position] + piece + text[position:]
        elif action == "truncate":
            text = text[:position]
        else:
            text = text[:position] + piece + text[position + len(piece) :]
    return text


@FUZZ
@given(data=st.data())
def test_extxyz_reader_reads_or_refuses_in_one_message(tmp_path, data):
    from jaxdistill.labelling import frame_problems, read_frames

    text = data.draw(mutated_text(_valid_extxyz(tmp_path)))
    path = tmp_path / "frames.extxyz"
    path.write_text(text)
    try:
        frames, _ = read_frames(path)
    except USER_ERRORS as error:
        assert str(error) and "\n" not in str(error).strip()
        return
    # read: every frame is either fine or has a problem in words
    for problem in frame_problems(frames).values():
        assert isinstance(problem, str) and problem


_KEYS = [
    "seed", "structures", "md", "rattle", "strain", "temperatures_kelvin",
    "frames_per_temperature", "stride", "count", "sigma_angstrom", "build", "args", "name",
    "teacher", "sampling", "train", "cutoff_angstrom", "steps", "learning_rate", "split",
    "batch_size", "model", "md_validation", "repeat", "file",
]  # fmt: skip
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 50),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
_DOCUMENTS = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(_KEYS), children, max_size=5),
    ),
    max_leaves=20,
)


@FUZZ
@given(document=_DOCUMENTS, raw=st.booleans(), data=st.data())
def test_yaml_config_readers_read_or_refuse_in_one_message(tmp_path, document, raw, data):
    from jaxdistill.config import DistillConfig, SamplingConfig, TrainConfig

    text = yaml.safe_dump(document)
    if raw:  # broken YAML too
        text = data.draw(mutated_text(text + "structures: [{build: bulk}]\n"))
    path = tmp_path / "config.yaml"
    path.write_text(text)
    for reader in (SamplingConfig.from_yaml, TrainConfig.from_yaml, DistillConfig.from_yaml):
        try:
            reader(path)
        except USER_ERRORS as error:
            assert str(error), reader
        except ImportError:  # a structure file naming a missing extra
            pass


_CELL = st.lists(st.floats(-8.0, 8.0, allow_nan=False), min_size=9, max_size=9)
_POSITIONS = st.lists(
    st.floats(-12.0, 12.0, allow_nan=False, allow_subnormal=False), min_size=3, max_size=18
)


@FUZZ
@given(
    cell=_CELL,
    flat=_POSITIONS,
    pbc=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    cutoff=st.floats(1.0, 3.0),
    poison=st.sampled_from([None, np.nan, np.inf, 3.8e117]),
)
def test_graph_from_atoms_on_random_cells_and_positions(cell, flat, pbc, cutoff, poison):
    from jaxdistill.graph import graph_from_atoms, validate_atoms

    positions = np.asarray(flat[: len(flat) // 3 * 3], dtype=np.float64).reshape(-1, 3)
    if poison is not None:
        positions[0, 0] = poison
    cell = np.asarray(cell).reshape(3, 3)
    if any(pbc):  # keep periodic cells wide enough that the image count stays small
        periodic = cell[list(pbc)]
        gram = periodic @ periodic.T
        assume(np.linalg.det(gram) > 1.0)
        volume = abs(np.linalg.det(cell)) if all(pbc) else None
        if volume is not None:
            widths = volume / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
            assume(widths.min() > 1.0)
    atoms = ase.Atoms(["Si"] * len(positions), positions=positions, cell=cell, pbc=pbc)
    try:
        validate_atoms(atoms, [14])
    except ValueError as error:
        assert str(error)
        return
    graph = graph_from_atoms(atoms, cutoff)
    n = len(atoms)
    edges = np.asarray(graph.edge_mask)
    senders = np.asarray(graph.senders)[edges]
    receivers = np.asarray(graph.receivers)[edges]
    assert np.all((senders >= 0) & (senders < n)) and np.all((receivers >= 0) & (receivers < n))
    shifts = np.asarray(graph.shifts)[edges]
    pos = np.asarray(graph.positions)
    vectors = pos[senders] - pos[receivers] + shifts @ np.asarray(graph.cell)[0]
    lengths = np.linalg.norm(vectors, axis=1)
    assert np.all(np.isfinite(lengths))
    assert np.all(lengths < cutoff + 1e-6)
    assert np.all(lengths > 0.0)  # no atom paired with itself at zero distance
