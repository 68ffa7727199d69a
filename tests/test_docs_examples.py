"""The code blocks of README.md and docs/md.md run as written.

Python blocks run in order in one fresh interpreter (as a user's script would: no
conftest, float32 students, no 64-bit mode), in a scratch folder that holds what the
prose assumes: ``atoms`` (64-atom Si), ``molecule`` (water) and a small trained-looking
student at ``runs/si/student``. Only loop lengths are shrunk (each substitution must
apply, so a changed example is noticed). Command lines of the bash blocks are parsed by
the real CLI (every command and flag must exist).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]

PRELUDE = """
import ase.build
import numpy as np
import jaxdistill as jd

atoms = ase.build.bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
atoms.rattle(0.01, seed=0)
molecule = ase.build.molecule("H2O")
jd.create_student("painn", ["H", "O", "Si"], cutoff=4.0, features=8, num_layers=1).save(
    "runs/si/student"
)
"""

# What one doc's prose assumes beyond PRELUDE: docs/md.md's committee members.
EXTRA_PRELUDE = {
    "docs/md.md": """
for k in range(4):
    jd.create_student(
        "painn", ["H", "O", "Si"], cutoff=4.0, features=8, num_layers=1, seed=k
    ).save(f"runs/si/student-s{k}")
""",
}

# (text in the doc, what the test runs instead): loop lengths only.
SHRINK = {
    "docs/md.md": [
        ("dyn.run(10_000)", "dyn.run(3)"),
        ("range(100)", "range(2)"),
        ("fori_loop(0, 1000, body", "fori_loop(0, 5, body"),
        ("steps=1_000_000", "steps=20"),
        ("sample_every=1000", "sample_every=10"),
        ("replicas=256, temperature_kelvin=np.linspace(300, 900, 256)",
         "replicas=4, temperature_kelvin=np.linspace(300, 900, 4)"),
        ("steps=20_000", "steps=20"),
    ],
    "README.md": [],
}  # fmt: skip


def _blocks(path: Path, *languages: str) -> list[str]:
    """The fenced code blocks of a Markdown file in one of ``languages`` ("" = none)."""
    blocks, language, lines = [], None, []
    for line in path.read_text().splitlines():
        fence = re.match(r"^\s*```(\w*)\s*$", line)
        if fence and language is None:
            language, lines = fence.group(1), []
        elif fence:
            if language in languages:
                blocks.append(textwrap.dedent("\n".join(lines)) + "\n")
            language = None
        elif language is not None:
            lines.append(line)
    return blocks


@pytest.mark.parametrize(
    "doc",
    [
        # four MD programs to compile (about 40 s on 2 cores); its jax-md loop with a
        # loaded float32 student also runs fast in tests/test_bad_inputs.py
        pytest.param("docs/md.md", marks=pytest.mark.slow),
        "README.md",
    ],
)
def test_python_blocks_run_as_written(doc, tmp_path):
    blocks = _blocks(ROOT / doc, "python")
    assert blocks, f"no python blocks in {doc}"
    script = "\n".join(blocks)
    for old, new in SHRINK[doc]:
        assert old in script, f"{doc} no longer contains {old!r}: update SHRINK"
        script = script.replace(old, new)
    (tmp_path / "example.py").write_text(PRELUDE + EXTRA_PRELUDE.get(doc, "") + "\n" + script)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _command_lines(path: Path) -> list[list[str]]:
    lines = []
    for block in _blocks(path, "bash", ""):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            for part in line.split(";"):
                part = part.split("#")[0].strip()
                if part.startswith("jaxdistill "):
                    lines.append(shlex.split(part)[1:])
    return lines


@pytest.mark.parametrize("doc", ["README.md", "docs/md.md", "docs/data.md"])
def test_command_lines_parse(doc):
    from jaxdistill.cli.main import app

    group = typer.main.get_command(app)
    lines = _command_lines(ROOT / doc)
    assert lines, f"no jaxdistill command lines in {doc}"
    for args in lines:
        name, rest = args[0], args[1:]
        command = group.get_command(click.Context(group), name)
        assert command is not None, f"{doc}: no command {name!r}"
        if any(a in ("-h", "--help") for a in rest) or rest == ["STUDENT_DIR"]:
            continue
        try:
            command.make_context(name, list(rest))
        except click.UsageError as error:
            pytest.fail(f"{doc}: `jaxdistill {' '.join(args)}`: {error.format_message()}")


def test_config_files_named_in_docs_exist():
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for name in re.findall(r"\bconfigs/[\w.-]+\.yaml", doc.read_text()):
            assert (ROOT / name).is_file(), f"{doc.name} names {name}, which does not exist"
