"""``asv_bench/client_memory.py`` end to end, at tiny sizes.

It starts a ``dask scheduler`` and two ``dask worker``s of its own, runs the seed
pattern once per N in a fresh client process and prints the client's memory table.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parent.parent / "asv_bench" / "client_memory.py"


@pytest.mark.parametrize("mode", [[], ["--as-completed"]])
def test_client_memory_script_end_to_end(mode):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--n", "100", "1000", "--batch-size", "auto", *mode],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=100,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "batch_size='auto'" in out
    for n in (100, 1000):  # a row each: N, wall s, ms/item, four MB columns
        assert re.search(rf"^\s+{n}(\s+-?\d+\.\d+){{6}}$", out, re.MULTILINE), out
    verdict = re.search(
        r"^client peak RSS at N=1000 minus N=100: [+-]\d+\.\d MB \(budget 50 MB\): (PASS|FAIL)$",
        out,
        re.MULTILINE,
    )
    assert verdict, out


def test_client_memory_script_rejects_a_bad_batch_size():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--batch-size", "many"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--batch-size" in proc.stderr
