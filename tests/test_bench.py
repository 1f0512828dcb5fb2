"""The benchmark scripts run (on tiny inputs), so the commands in BENCHMARKS.md do not rot."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.fixture
def session_cluster(ray_session) -> dict[str, str]:
    """The environment of a benchmark that joins the test session's Ray instead of starting its own."""
    import ray

    return {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}


def test_decode_benchmark_runs_end_to_end(tmp_path, session_cluster):
    # Both cases, every measure, one round of one GOP length and no warm-up: every code path of
    # the script, at a quarter of the work of the smallest full table.
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "decode.py"), "--clips", "2", "--scale", "0.05",
         "--repeat", "1", "--rounds", "1", "--workers", "1", "--gops", "2", "--no-warmup", "--data", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=session_cluster, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith(("| 2 s", "| 10 s"))]
    assert len(rows) == 2  # dense and sparse
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        assert len(cells) == 10 and all(float(c) > 0 for c in cells[1:8])


def test_soak_runs_small_with_every_fault_and_loses_nothing(tmp_path):
    # 61 ids in 3-item shards on 2 workers (on any machine): probe takes a few seconds, long enough to
    # kill workers in and to start driver B at its first commit, so B meets A's lease; keyframes is
    # quick, and A is killed in it.
    env = {**os.environ, "RAY_ADDRESS": ""}  # its own Ray: it kills workers and drivers
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--videos", "60", "--pool", "6", "--rows-per-shard", "3",
         "--workers", "2", "--second-driver-at", "probe:0", "--worker-kills-at", "probe:0.25", "probe:0.5",
         "--driver-kill-at", "keyframes:0.4", "--data", str(tmp_path / "soak")],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "| items (video ids in the CSV) | 61 | 61 |" in out
    assert "| lost (must be 0) | 0 | 0 |" in out
    assert "| duplicated (must be 0) | 0 | 0 |" in out
    assert out.count("SIGKILLed") == 3  # two workers and driver A
    assert "is being written by" in out
    assert "resuming, " in out
    assert "`tvr verify OUT` exited 0" in out
    assert "**Result: PASS**" in out


def test_features_benchmark_runs_end_to_end(tmp_path, session_cluster):
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "features.py"), "--videos", "2", "--rounds", "1", "--arch", "tiny",
         "--threads", "1", "--data", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=session_cluster, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip().strip("|").split("|")]
    assert len(cells) == 5 and all(float(c) > 0 for c in cells[:3])


def test_training_benchmark_runs_end_to_end():
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "train.py"), "--steps", "1", "--threads", "1", "--batch", "8",
         "--dim", "64", "--test", "40", "--bank", "5000"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and not line.startswith("| head")]
    assert [r.split("|")[1].strip() for r in rows] == ["meanpool", "xpool", "macvr", "tmass", "lsdo"] * 2
    assert "querybank 5,000 x 40 float32" in result.stdout
