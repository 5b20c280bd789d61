"""The layers of README "Layout" hold and bite: the import contracts fail on a forbidden import, and the
online entry points (API app, worker) import without the `ml` extra, as the Docker images install them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
# matplotlib is not blocked: captum (evidence) imports it, so it is a runtime dependency through captum.
ML_EXTRA = ("sklearn", "lightgbm", "scipy")


def test_api_and_worker_import_without_the_ml_extra() -> None:
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in ML_EXTRA)
    code = (
        f"import sys; {blocked}\n"
        "import cds_service.api.main, cds_service.workers.tasks, cds_service.runtime\n"
        "from cds_service.api.main import create_app\n"
        "create_app(backend=None)\n"
        f"assert not any(m in sys.modules and sys.modules[m] is not None for m in {ML_EXTRA!r})\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    # the block is real: the offline side does need the extra
    offline = subprocess.run(
        [sys.executable, "-c", f"import sys; {blocked}\nimport cds_service.evaluation.report"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert offline.returncode != 0 and ("ImportError" in offline.stderr or "ModuleNotFoundError" in offline.stderr)


def _lint_copy(tmp_path: Path, edit: tuple[str, str] | None) -> subprocess.CompletedProcess[str]:
    """lint-imports over a copy of the package, with one line appended to one module."""
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    if edit is not None:
        module, line = edit
        path = tmp_path / "src" / "cds_service" / module
        path.write_text(path.read_text() + f"\n{line}\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src")}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_the_contracts_hold_on_the_tree(tmp_path: Path) -> None:
    done = _lint_copy(tmp_path, None)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "3 kept, 0 broken" in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("core/errors.py", "import cds_service.api.main", "Layers"),
        ("cards/render.py", "import cds_service.training.train", "online path"),
        ("serving/jobs.py", "import sklearn", "online path"),
        ("ml/contract.py", "import torch", "torch-free"),
        ("hooks/prefetch.py", "import cds_service.services.registry", "Layers"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(tmp_path: Path, module: str, line: str, contract: str) -> None:
    done = _lint_copy(tmp_path, (module, line))
    assert done.returncode != 0
    broken = [row for row in done.stdout.splitlines() if row.endswith("BROKEN")]
    assert any(contract in row for row in broken), done.stdout[-3000:]
