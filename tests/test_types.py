"""The public API's types, as a user's editor sees them (mypy and pyright).

A correct pipeline (``examples/typed_pipeline.py``) type-checks clean, and each usual
mistake in ``tests/typing/mistakes.py`` is reported on its own line (the lines with an
error comment) and nowhere else. The package itself is checked by ``mypy`` in CI.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "typed_pipeline.py"
MISTAKES = REPO / "tests" / "typing" / "mistakes.py"


def marked_lines(path: Path) -> set[int]:
    return {i for i, line in enumerate(path.read_text().splitlines(), 1) if "# error:" in line}


def mypy(path: Path) -> tuple[int, set[int], str]:
    from mypy import api

    # the package's own modules are checked on their own (CI's `mypy`): here, what a
    # user's file meets
    out, err, code = api.run(
        [
            "--follow-imports=silent",
            "--no-incremental",
            "--config-file",
            str(REPO / "pyproject.toml"),
            str(path),
        ]
    )
    lines = {
        int(m)
        for m in re.findall(rf"^{re.escape(str(path.relative_to(REPO)))}:(\d+): error", out, re.M)
    }
    lines |= {int(m) for m in re.findall(rf"^{re.escape(str(path))}:(\d+): error", out, re.M)}
    return code, lines, out + err


def pyright(path: Path) -> tuple[int, set[int], str]:
    exe = shutil.which("pyright")
    cmd = [exe] if exe else [sys.executable, "-m", "pyright"]
    proc = subprocess.run(
        [*cmd, "--pythonpath", sys.executable, str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    lines = {int(m) for m in re.findall(rf"{re.escape(str(path))}:(\d+):\d+ - error", proc.stdout)}
    return proc.returncode, lines, proc.stdout + proc.stderr


@pytest.mark.parametrize("checker", [mypy, pyright], ids=["mypy", "pyright"])
def test_a_correct_pipeline_type_checks_clean(checker):
    code, lines, out = checker(EXAMPLE)
    assert code == 0 and not lines, out


@pytest.mark.parametrize("checker", [mypy, pyright], ids=["mypy", "pyright"])
def test_each_usual_mistake_is_reported_on_its_line(checker):
    code, lines, out = checker(MISTAKES)
    assert code != 0
    assert lines == marked_lines(MISTAKES), out
