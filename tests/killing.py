"""What the killed-driver tests share: reading a stage's commit records while a run writes them,
and a real `tvr run` killed with SIGKILL once a stage has committed enough shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def committed(out: Path, stage: str) -> dict:
    """The stage's version manifest, with its commit records as `shards` ({} while there is none)."""
    for manifest in (out / stage).glob("*/_manifest.json"):
        try:
            record = json.loads(manifest.read_text())
            commits = sorted(manifest.parent.glob("_commits/*.json"))
            record["shards"] = {path.stem: json.loads(path.read_text()) for path in commits}
            return record
        except (json.JSONDecodeError, FileNotFoundError):  # mid-rename; look again
            return {}
    return {}


def run_until_killed(config: Path, stages: list[str], env: dict, out: Path, stage: str, shards: int) -> dict:
    """Start `tvr run CONFIG --stages ...`, SIGKILL it once `stage` has `shards` commits, clean up
    the local Ray it started, and return what was committed."""
    driver = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(config), "--stages", *stages],
                              env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    deadline = time.monotonic() + 240
    try:
        while len(committed(out, stage).get("shards", {})) < shards:
            assert driver.poll() is None, f"the run ended before it could be killed:\n{driver.stdout.read()}"
            assert time.monotonic() < deadline, f"no {stage} shard committed within 240 s"
            time.sleep(0.01)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)  # the local Ray processes it had started
        except ProcessLookupError:
            pass
    return committed(out, stage)
