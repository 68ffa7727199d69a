"""Every bad input gets one clear line, and nothing is lost (issue 17).

Each case feeds one bad input through the real CLI app (or the API) and asserts the
exit code (2 for a user error, see jaxdistill.cli.errors), that the message names the
culprit (file, frame, key or flag), that it is one line without a traceback, and that
every file already on disk is byte-identical afterwards.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import ase
import ase.build
import ase.io
import numpy as np
import pytest
import yaml
from ase.calculators.calculator import Calculator, all_changes
from typer.testing import CliRunner

from jaxdistill.cli.errors import USER_ERROR
from jaxdistill.cli.main import app
from jaxdistill.data import LabelStore
from jaxdistill.teachers.base import TeacherLabels

EMT_SPEC = "ase:ase.calculators.emt:EMT"


# ------------------------------------------------------------------ helpers
def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def run_cli(folder: Path, args: list[str], code: int = USER_ERROR, *names: str) -> str:
    """Run ``jaxdistill ARGS``; check the exit code, one error line naming ``names``
    and that nothing under ``folder`` changed. Returns the output."""
    before = snapshot(folder)
    result = CliRunner().invoke(app, [str(a) for a in args])
    output = result.output
    assert result.exit_code == code, output + repr(result.exception)
    assert "Traceback" not in output, output
    error_lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, output
    for name in names:
        assert str(name) in error_lines[0], (name, error_lines[0])
    assert snapshot(folder) == before, "files on disk changed"
    return error_lines[0]


def cu_frames(n: int = 4) -> list[ase.Atoms]:
    frames = []
    for i in range(n):
        atoms = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True)
        atoms.rattle(0.05, seed=i)
        frames.append(atoms)
    return frames


def store_with(path: Path, frames: list[ase.Atoms], energy: float = -1.0) -> Path:
    """A label store holding ``frames`` with made-up finite labels (what a store with
    a bad frame written by an older version looks like)."""
    store = LabelStore.create(
        path,
        teacher={"name": "made-up"},
        capacity_frames=len(frames),
        capacity_atoms=sum(len(a) for a in frames),
    )
    labels = [TeacherLabels(energy, np.zeros((len(a), 3)), np.full(6, np.nan)) for a in frames]
    with store:
        if frames:
            store.append(frames, labels)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder with good inputs: frames, a labelled store, a tiny Cu student."""
    from jaxdistill import create_student
    from jaxdistill.labelling import label

    folder = tmp_path_factory.mktemp("bad-inputs")
    ase.io.write(folder / "frames.extxyz", cu_frames(), format="extxyz")
    label(EMT_SPEC, folder / "frames.extxyz", folder / "labels.h5", progress=False)
    create_student("painn", ["Cu"], cutoff=3.0, features=8, num_layers=1).save(folder / "student")
    create_student("painn", ["Si"], cutoff=3.0, features=8, num_layers=1).save(
        folder / "si-student"
    )
    return folder


@pytest.fixture
def work(workspace, tmp_path):
    """A fresh copy of the workspace for one test."""
    shutil.copytree(workspace, tmp_path, dirs_exist_ok=True)
    return tmp_path


# ------------------------------------------------------------------ label
def test_label_refuses_a_frame_with_a_nan_position(work):
    frames = cu_frames()
    frames[2].positions[1, 0] = np.nan
    ase.io.write(work / "bad.extxyz", frames, format="extxyz")
    line = run_cli(
        work,
        ["label", "--teacher", EMT_SPEC, "-i", work / "bad.extxyz", "-o", work / "l.h5"],
        USER_ERROR,
        "frame 2 of",
        "bad.extxyz",
        "--skip-bad-frames",
    )
    assert "NaN" in line and not (work / "l.h5").exists()


def test_label_refuses_coincident_atoms(work):
    frames = cu_frames()
    frames[1].positions[3] = frames[1].positions[0]
    ase.io.write(work / "bad.extxyz", frames, format="extxyz")
    run_cli(
        work,
        ["label", "--teacher", EMT_SPEC, "-i", work / "bad.extxyz", "-o", work / "l.h5"],
        USER_ERROR,
        "frame 1 of",
        "atoms 0 and 3",
        "coincident",
    )


def test_label_skip_bad_frames_names_them_and_labels_the_rest(work):
    frames = cu_frames()
    frames[1].positions[3] = frames[1].positions[0]
    ase.io.write(work / "bad.extxyz", frames, format="extxyz")
    result = CliRunner().invoke(
        app,
        ["label", "--teacher", EMT_SPEC, "-i", str(work / "bad.extxyz"), "-o",
         str(work / "l.h5"), "--skip-bad-frames", "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "frame 1 of" in result.output
    with LabelStore(work / "l.h5") as store:
        assert len(store) == 3


def test_label_refuses_an_empty_input_file(work):
    (work / "empty.extxyz").write_text("")
    run_cli(
        work,
        ["label", "--teacher", EMT_SPEC, "-i", work / "empty.extxyz", "-o", work / "l.h5"],
        USER_ERROR,
        "empty.extxyz",
        "empty",
    )


def test_label_refuses_a_file_that_is_not_frames(work):
    (work / "junk.extxyz").write_text("this is\nnot a structure\n")
    run_cli(
        work,
        ["label", "--teacher", EMT_SPEC, "-i", work / "junk.extxyz", "-o", work / "l.h5"],
        USER_ERROR,
        "junk.extxyz",
    )


def test_label_refuses_batch_size_zero(work):
    run_cli(
        work,
        ["label", "--teacher", EMT_SPEC, "-i", work / "frames.extxyz", "-o", work / "l.h5",
         "--batch-size", "0"],
        USER_ERROR,
        "--batch-size",
    )  # fmt: skip


class _NaNCalculator(Calculator):
    """A teacher gone wrong: NaN forces on every frame after the first two."""

    implemented_properties = ("energy", "forces")
    calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        _NaNCalculator.calls += 1
        forces = np.zeros((len(self.atoms), 3))
        if _NaNCalculator.calls > 2:
            forces[0, 1] = np.nan
        self.results = {"energy": -1.0, "forces": forces}


def test_label_refuses_non_finite_teacher_output_and_keeps_earlier_batches(work):
    from jaxdistill.labelling import label
    from jaxdistill.teachers import load_teacher

    _NaNCalculator.calls = 0
    with pytest.raises(ValueError, match=r"frame 2 of .*frames.extxyz: the teacher's forces"):
        label(
            load_teacher(_NaNCalculator()),
            work / "frames.extxyz",
            work / "l.h5",
            batch_size=2,
            progress=False,
        )
    with LabelStore(work / "l.h5") as store:
        assert len(store) == 2  # the batch before is stored, the bad one is not


def test_label_refuses_a_different_input_for_an_existing_store(work):
    frames = cu_frames(3)
    ase.io.write(work / "other.extxyz", frames, format="extxyz")
    run_cli(
        work,
        ["label", "--teacher", EMT_SPEC, "-i", work / "other.extxyz", "-o", work / "labels.h5"],
        USER_ERROR,
        "labels.h5",
        "different input",
    )


# ------------------------------------------------------------------ train
def test_train_on_a_truncated_store(work):
    data = (work / "labels.h5").read_bytes()
    (work / "cut.h5").write_bytes(data[: len(data) // 2])
    line = run_cli(
        work, ["train", "--data", work / "cut.h5", "--output", work / "s"], USER_ERROR, "cut.h5"
    )
    assert "truncated" in line and "another process" not in line


def test_train_on_an_empty_file(work):
    (work / "empty.h5").write_bytes(b"")
    run_cli(
        work,
        ["train", "--data", work / "empty.h5", "--output", work / "s"],
        USER_ERROR,
        "empty.h5",
        "empty file",
    )


def test_train_on_a_store_with_zero_frames(work):
    store_with(work / "zero.h5", [])
    run_cli(
        work,
        ["train", "--data", work / "zero.h5", "--output", work / "s"],
        USER_ERROR,
        "zero.h5",
    )


def test_train_refuses_a_store_with_a_bad_frame_by_number(work):
    frames = cu_frames()
    frames[3].positions[0, 2] = 3.8e117
    store_with(work / "far.h5", frames)
    run_cli(
        work,
        ["train", "--data", work / "far.h5", "--output", work / "s", "--config",
         _train_yaml(work, split={"train": 1.0})],
        USER_ERROR,
        "far.h5",
        "frame 3",
        "--skip-bad-frames",
    )  # fmt: skip


def _train_yaml(work: Path, **values) -> Path:
    path = work / "train.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize(
    "text, names",
    [
        ('cutoff_angstrom: "5"\n', ["cutoff_angstrom", "'5'"]),
        ("learning_rate: 3e-4\n", ["learning_rate", "0.0003"]),
        ("steps: forty\n", ["steps", "integer"]),
        ("steps: [1, 2\n", ["train.yaml", "line 2"]),
        ("- a list\n", ["train.yaml", "mapping"]),
    ],
)
def test_train_config_errors_name_the_key(work, text, names):
    (work / "train.yaml").write_text(text)
    run_cli(
        work,
        ["train", "--data", work / "labels.h5", "--output", work / "s", "--config",
         work / "train.yaml"],
        USER_ERROR,
        *names,
    )  # fmt: skip


def test_resume_with_another_cutoff_names_the_key_and_the_flag(tmp_path):
    from jaxdistill.config import TrainConfig
    from jaxdistill.train.loop import _check_resume

    saved = {"config": TrainConfig(cutoff_angstrom=4.0).to_dict(), "data": {}}
    with pytest.raises(ValueError) as raised:
        _check_resume(saved, TrainConfig(cutoff_angstrom=5.0), {}, tmp_path)
    assert "cutoff_angstrom" in str(raised.value) and "--restart" in str(raised.value)


# ------------------------------------------------------------------ evaluate
def test_evaluate_refuses_a_store_position_of_3_8e117(work):
    frames = cu_frames()
    frames[1].positions[2, 0] = 3.8e117
    store_with(work / "far.h5", frames)
    run_cli(
        work,
        ["evaluate", "--student", work / "student", "--data", work / "far.h5", "--split", "all"],
        USER_ERROR,
        "far.h5",
        "frame 1",
        "farther than",
    )


def test_evaluate_names_the_flag_for_an_untrained_student(work):
    run_cli(
        work,
        ["evaluate", "--student", work / "student", "--data", work / "labels.h5"],
        USER_ERROR,
        "--split all",
    )


def test_evaluate_refuses_a_store_of_other_elements(work):
    run_cli(
        work,
        ["evaluate", "--student", work / "si-student", "--data", work / "labels.h5",
         "--split", "all"],
        USER_ERROR,
        "labels.h5",
        "Cu",
    )  # fmt: skip


def test_evaluate_does_not_overwrite_an_earlier_evaluation(work):
    (work / "ev").mkdir()
    (work / "ev" / "evaluation.json").write_text('{"mine": 1}\n')
    run_cli(
        work,
        ["evaluate", "--student", work / "student", "--data", work / "labels.h5", "--split",
         "all", "--output", work / "ev"],
        USER_ERROR,
        "evaluation.json",
        "--overwrite",
    )  # fmt: skip


# ------------------------------------------------------------------ student files
def test_info_on_a_missing_directory(work):
    run_cli(work, ["info", work / "nowhere"], USER_ERROR, "nowhere", "no such student")


def test_info_on_an_empty_student_json(work):
    (work / "student" / "student.json").write_text("{}")
    run_cli(work, ["info", work / "student"], USER_ERROR, "student.json", "architecture")


def test_info_on_a_truncated_student_json(work):
    path = work / "student" / "student.json"
    path.write_text(path.read_text()[:40])
    run_cli(work, ["info", work / "student"], USER_ERROR, "student.json", "not valid JSON")


def test_student_json_that_disagrees_with_its_parameters(work):
    path = work / "student" / "student.json"
    config = json.loads(path.read_text())
    config["hyperparameters"]["features"] = 16
    path.write_text(json.dumps(config))
    run_cli(work, ["info", work / "student"], USER_ERROR, "student.json", "disagrees")


# ------------------------------------------------------------------ sample
def _sampling(work: Path, **changes) -> Path:
    data = {
        "seed": 1,
        "structures": [
            {"build": "bulk", "args": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61}}
        ],
        "rattle": {"count": 2},
        **changes,
    }
    path = work / "sampling.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "changes, names",
    [
        ({"md": {"temperatures_kelvin": "300K"}}, ["temperatures_kelvin", "300K"]),
        ({"md": {"temperatures_kelvin": [300], "frames_per_temperature": "forty"}},
         ["frames_per_temperature", "forty"]),
        ({"rattle": {"count": 2, "sigma_angstrom": True}}, ["sigma_angstrom"]),
    ],
)  # fmt: skip
def test_sample_config_errors_name_the_key(work, changes, names):
    config = _sampling(work, **changes)
    run_cli(work, ["sample", config, "-o", work / "out.extxyz"], USER_ERROR, *names)


def test_sample_invalid_yaml_is_one_line(work):
    (work / "sampling.yaml").write_text("structures:\n  - build: bulk\n   args: {a: 1\n")
    run_cli(
        work,
        ["sample", work / "sampling.yaml", "-o", work / "out.extxyz"],
        USER_ERROR,
        "sampling.yaml",
        "line",
    )


def test_sample_empty_config(work):
    (work / "sampling.yaml").write_text("")
    run_cli(
        work,
        ["sample", work / "sampling.yaml", "-o", work / "out.extxyz"],
        USER_ERROR,
        "sampling.yaml",
        "empty",
    )


def test_sample_refuses_to_overwrite(work):
    config = _sampling(work)
    (work / "out.extxyz").write_text("precious\n")
    run_cli(work, ["sample", config, "-o", work / "out.extxyz"], USER_ERROR, "--overwrite")


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        PermissionError(errno.EACCES, "Permission denied"),  # a read-only folder, as root
    ],
)
def test_sample_full_disk_or_read_only_folder_leaves_nothing(work, monkeypatch, error):
    import ase.io as aseio

    config = _sampling(work)
    real_write = aseio.write

    def failing_write(filename, *args, **kwargs):
        Path(filename).write_text("half a frame")  # a partial file, as a full disk leaves
        raise error

    monkeypatch.setattr(aseio, "write", failing_write)
    run_cli(
        work, ["sample", config, "-o", work / "out.extxyz"], USER_ERROR, "out.extxyz",
        error.strerror,
    )  # fmt: skip
    monkeypatch.setattr(aseio, "write", real_write)


@pytest.mark.skipif(not hasattr(sys, "getuid") or sys.getuid() == 0, reason="root ignores modes")
def test_sample_into_a_read_only_folder(work):
    config = _sampling(work)
    folder = work / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        run_cli(work, ["sample", config, "-o", folder / "out.extxyz"], USER_ERROR, "out.extxyz")
    finally:
        folder.chmod(0o700)


def test_sample_uses_a_pipeline_configs_teacher(work):
    """configs/quickstart.yaml's own teacher drives `sample` (no 'needs a teacher')."""
    from jaxdistill.cli.data import _sampling_config

    config = work / "pipeline.yaml"
    config.write_text(
        yaml.safe_dump(
            {"name": "x", "teacher": EMT_SPEC, "sampling": yaml.safe_load(
                _sampling(work, md={"temperatures_kelvin": [300], "frames_per_temperature": 1,
                                    "stride": 1, "equilibration_steps": 0}).read_text())}
        )
    )  # fmt: skip
    result = CliRunner().invoke(
        app, ["sample", str(config), "-o", str(work / "out.extxyz"), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert _sampling_config(config)[1].teacher == EMT_SPEC


# ------------------------------------------------------------------ md
def _md(work: Path, *extra) -> list:
    return ["md", "--student", work / "student", "--structure", work / "frames.extxyz",
            "--steps", "2", "--no-progress", *extra]  # fmt: skip


def test_md_refuses_to_overwrite_its_output(work):
    (work / "traj.extxyz").write_text("precious\n")
    run_cli(
        work, _md(work, "--output", work / "traj.extxyz"), USER_ERROR, "--output", "--overwrite"
    )


@pytest.mark.parametrize(
    "flag, value",
    [("--friction-per-fs", "-1"), ("--replicas", "0"), ("--replicas", "-3"),
     ("--steps", "-5"), ("--timestep-fs", "0"), ("--temperature", "-10")],
)  # fmt: skip
def test_md_rejects_bad_flag_values(work, flag, value):
    args = [a for a in _md(work) if a not in ("--steps", "2")] + [flag, value]
    run_cli(work, args, USER_ERROR, flag)


def test_md_two_atom_cell_with_jax_md_names_engine_ase(work):
    ase.io.write(work / "cu2.extxyz", ase.build.bulk("Cu", "fcc", a=3.61) * (2, 1, 1))
    args = _md(work, "--engine", "jax-md")
    args[args.index(work / "frames.extxyz")] = work / "cu2.extxyz"
    run_cli(work, args, USER_ERROR, "cu2.extxyz", "--engine ase")


def test_md_structure_empty_file(work):
    (work / "empty.xyz").write_text("")
    args = _md(work)
    args[args.index(work / "frames.extxyz")] = work / "empty.xyz"
    run_cli(work, args, USER_ERROR, "--structure", "empty.xyz")


# ------------------------------------------------------------------ the CLI as a whole
def test_debug_shows_the_traceback(work):
    result = CliRunner().invoke(app, ["info", str(work / "nowhere"), "--debug"])
    assert isinstance(result.exception, FileNotFoundError)


def test_distill_with_a_missing_config(work):
    run_cli(work, ["distill", work / "none.yaml"], USER_ERROR, "none.yaml", "not found")


def test_help_texts_have_no_raw_markup():
    for command in ("sample", "label", "train", "evaluate", "md", "distill", "info", "demo"):
        result = CliRunner().invoke(app, [command, "--help"])
        assert result.exit_code == 0
        assert "``" not in result.output, command


def test_python_dash_m_jaxdistill():
    result = subprocess.run(
        [sys.executable, "-m", "jaxdistill", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "jaxdistill" in result.stdout


# ------------------------------------------------------------------ API
def test_student_calculator_refuses_coincident_atoms():
    from jaxdistill import StudentCalculator, create_student

    student = create_student("painn", ["Si"], cutoff=3.0, features=8, num_layers=1)
    atoms = ase.Atoms("Si3", positions=[[0, 0, 0], [2.3, 0, 0], [2.3, 0, 1e-4]])
    atoms.calc = StudentCalculator(student)
    with pytest.raises(ValueError, match=r"atoms 1 and 2 .* \(coincident"):
        atoms.get_potential_energy()


def test_a_loaded_float32_student_runs_in_a_users_jax_md_loop(workspace):
    """docs/md.md's own jax-md loop with a student from load_student (item 1)."""
    import jax
    import jax.numpy as jnp
    from jax_md import simulate, space

    from jaxdistill import jax_md_potential, load_student

    student = load_student(workspace / "student")
    assert student.dtype == "float32"
    atoms = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    box = jnp.asarray(atoms.cell.array.T, jnp.float32)
    displacement_fn, shift_fn = space.periodic_general(box, fractional_coordinates=False)
    neighbor_fn, energy_fn = jax_md_potential(student, displacement_fn, box, atoms.numbers)
    positions = jnp.asarray(atoms.positions, jnp.float32)
    nbrs = neighbor_fn.allocate(positions)
    init_fn, apply_fn = simulate.nve(energy_fn, shift_fn, 1e-3)
    state = jax.jit(init_fn)(jax.random.PRNGKey(0), positions, kT=0.01, neighbor=nbrs)
    state = jax.jit(apply_fn)(state, neighbor=nbrs)
    assert np.all(np.isfinite(np.asarray(state.position)))
