"""The benchmark script runs (on tiny clips), so the command in BENCHMARKS.md does not rot."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_decode_benchmark_runs_end_to_end(tmp_path):
    env = {**os.environ, "RAY_ADDRESS": ""}  # its own local Ray, not the test session's
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "decode.py"), "--clips", "2", "--seconds", "2",
         "--repeat", "1", "--rounds", "1", "--workers", "1", "--data", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| 2 s") or line.startswith("| 10 s")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert all(float(c) > 0 for c in cells[1:4] + cells[5:7])
