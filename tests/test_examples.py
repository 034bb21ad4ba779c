"""Every script in ``examples/`` runs end to end in its ``--smoke`` mode and writes pictures.

Each example runs in a fresh interpreter, as a user would run it, with the repository
root on ``PYTHONPATH`` and its output redirected to a temporary folder. Smoke mode uses
tiny nets, one epoch and few importance samples, so each script takes seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))  # _common.py is a helper


def test_examples_exist():
    assert len(EXAMPLES) >= 9, [p.name for p in EXAMPLES]


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_smoke(script: Path, tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore"}
    # One thread per script: pytest-xdist runs two at a time on two cores.
    env.setdefault("OMP_NUM_THREADS", "1")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(script), "--smoke", "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    pngs = list(out.rglob("*.png"))
    assert pngs, f"{script.name} wrote no PNG into {out}: {sorted(p.name for p in out.rglob('*'))}"
    assert all(p.stat().st_size > 1000 for p in pngs), [(p.name, p.stat().st_size) for p in pngs]
    assert proc.stdout.strip(), f"{script.name} printed nothing"
