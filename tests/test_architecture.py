"""The import contracts in pyproject.toml (docs/architecture.md) hold, and they fail when a lower
layer imports a higher one or two modules of a package import each other."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = "Layers: from the command line down to config"
STORE = "Store: verify and status over the version folder over storage"
CYCLES = "No import cycles inside any package"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint(tree: Path) -> subprocess.CompletedProcess:
    # grimp finds `pipeline` by importing it: the copy under `tree` must come first on the path.
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"), "--no-cache"],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of the package and its contracts, to plant imports in."""
    shutil.copytree(ROOT / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _plant(tree: Path, module: str, line: str) -> None:
    path = tree / module
    text = path.read_text()
    marker = "from __future__ import annotations\n"
    path.write_text(text.replace(marker, marker + "\n" + line + "\n", 1))


def test_the_package_keeps_its_contracts(tree):
    result = _lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module, line, broken", [
    # storage knowing of the runner: a lower layer importing a higher one
    ("pipeline/store/storage.py", "import pipeline.run.runner  # noqa", LAYERS),
    # decode and engines are side by side and know nothing of each other
    ("pipeline/decode/probe.py", "import pipeline.engines.base  # noqa", LAYERS),
    # the version folder reaching up to verify, inside the store
    ("pipeline/store/version.py", "import pipeline.store.verify  # noqa", STORE),
    # the cycle this layout removed: containment and probe importing each other
    ("pipeline/decode/containment.py", "import pipeline.decode.probe  # noqa", CYCLES),
])
def test_a_planted_import_breaks_a_contract(tree, module, line, broken):
    _plant(tree, module, line)
    result = _lint(tree)
    assert result.returncode != 0
    assert f"{broken} BROKEN" in result.stdout, result.stdout  # (an upward import is a cycle too)
