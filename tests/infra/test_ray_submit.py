"""`scripts/check-ray-submit`: `ray job submit` of the labeling job against a local head, as docs/batch.md writes it.

Slow lane (`ray`): the script starts its own head (free ports, its own temp dir), submits the job
with --address/--working-dir/absolute paths, checks the rows, and stops only that head.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("curl") is None or shutil.which("setsid") is None, reason="needs curl and setsid")
def test_ray_job_submit_against_a_local_head_works_as_documented():
    venv = Path(sys.executable).parent.parent
    if not (venv / "bin" / "ray").exists():
        pytest.skip("the ray CLI is not installed next to this Python")
    done = subprocess.run(["bash", str(ROOT / "scripts" / "check-ray-submit"), str(venv)], cwd=ROOT,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    assert "rows 3" in done.stdout and "succeeded" in done.stdout + done.stderr
