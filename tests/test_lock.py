"""scripts/check_lock.py: the hash-locked requirements/ agree with pyproject.toml, and it notices when they don't."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
CHECK = ROOT / "scripts" / "check_lock.py"


def check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHECK), "--root", str(root)], capture_output=True, text=True, timeout=60, check=False
    )


def stamp(root: Path, lock: str) -> None:
    """What scripts/lock.sh does after pip-compile: record the (changed) pyproject in the lock's header."""
    subprocess.run([sys.executable, str(CHECK), "--root", str(root), "--stamp", lock], check=True, timeout=60)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "requirements", tmp_path / "requirements")
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def pin(lock: Path, name: str) -> str:
    match = re.search(rf"^{re.escape(name)}==(\S+)", lock.read_text(), re.M)
    assert match, name
    return match.group(1)


def test_repo_locks_agree_with_pyproject() -> None:
    result = check(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    text = {p.name: p.read_text() for p in (ROOT / "requirements").iterdir()}
    assert {"dev.lock", "serve.lock", "torch-cpu.txt"} <= text.keys()
    # torch stays out of the locks, its own dependencies are in; the lock carries no local paths
    for lock in ("dev.lock", "serve.lock"):
        assert not re.search(r"^torch==", text[lock], re.M)
        for dep in ("sympy", "networkx", "jinja2", "filelock", "fsspec", "setuptools", "wheel"):
            assert re.search(rf"^{dep}==", text[lock], re.M), (lock, dep)
        assert "file:" not in text[lock] and "/opt/" not in text[lock]
    assert re.search(r"^pip==", text["dev.lock"], re.M)  # pip-tools needs it; nothing at run time does
    assert re.search(r"^torch==2\.13\.0\+cpu \\\n +--hash=sha256:[0-9a-f]{64}$", text["torch-cpu.txt"], re.M)
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in text["torch-cpu.txt"]


def test_added_dependency_makes_the_lock_stale(copy: Path) -> None:
    edit(copy / "pyproject.toml", '  "redis>=5.0",\n', '  "redis>=5.0",\n  "left-pad>=1.0",\n')
    result = check(copy)
    assert result.returncode == 1
    assert "dependencies: left-pad>=1.0 added" in result.stdout
    assert "requirements/serve.lock: left-pad>=1.0 ([project] dependencies) is not pinned" in result.stdout
    assert "requirements/dev.lock: left-pad>=1.0 ([project] dependencies) is not pinned" in result.stdout


def test_dependency_added_to_an_extra_makes_only_the_dev_lock_stale(copy: Path) -> None:
    edit(copy / "pyproject.toml", '"matplotlib>=3.8"]', '"matplotlib>=3.8", "statsmodels>=0.14"]')
    result = check(copy)
    assert result.returncode == 1
    assert "dev.lock: statsmodels>=0.14 ([project.optional-dependencies] ml) is not pinned" in result.stdout
    assert "serve.lock" not in result.stdout


def test_changed_range_the_pins_still_satisfy_is_caught_by_the_digest(copy: Path) -> None:
    edit(copy / "pyproject.toml", '"numpy>=1.26"', '"numpy>=1.20"')
    result = check(copy)
    assert result.returncode == 1
    assert "dependencies: numpy>=1.26 is now numpy>=1.20" in result.stdout
    assert "stale" in result.stdout


def test_removed_dependency_is_caught(copy: Path) -> None:
    edit(copy / "pyproject.toml", '  "tqdm>=4.66",\n', "")
    result = check(copy)
    assert result.returncode == 1
    assert "dependencies: tqdm>=4.66 removed" in result.stdout


def test_pin_that_does_not_satisfy_the_range_fails(copy: Path) -> None:
    numpy = pin(copy / "requirements" / "serve.lock", "numpy")
    for lock in ("dev.lock", "serve.lock"):
        edit(copy / "requirements" / lock, f"\nnumpy=={numpy} ", "\nnumpy==1.25.0 ")
    result = check(copy)
    assert result.returncode == 1
    assert "requirements/serve.lock: pins numpy==1.25.0, which does not satisfy numpy>=1.26" in result.stdout
    assert "stale" not in result.stdout  # pyproject did not change, the pin did


def test_range_raised_past_the_pin_fails_even_with_a_fresh_digest(copy: Path) -> None:
    fastapi = pin(copy / "requirements" / "dev.lock", "fastapi")
    edit(copy / "pyproject.toml", '"fastapi>=0.115"', f'"fastapi>{fastapi}"')
    for lock in ("dev.lock", "serve.lock"):
        stamp(copy, lock)
    result = check(copy)
    assert result.returncode == 1
    assert f"pins fastapi=={fastapi}, which does not satisfy fastapi>{fastapi}" in result.stdout
    assert "stale" not in result.stdout


def test_torch_file_must_satisfy_pyproject(copy: Path) -> None:
    edit(copy / "pyproject.toml", '"torch==2.13.0"', '"torch==2.14.0"')
    for lock in ("dev.lock", "serve.lock"):
        stamp(copy, lock)
    result = check(copy)
    assert result.returncode == 1
    assert "requirements/torch-cpu.txt: pins torch==2.13.0+cpu, which does not satisfy torch==2.14.0" in result.stdout


def test_unhashed_or_local_pins_and_torch_in_a_lock_fail(copy: Path) -> None:
    lock = copy / "requirements" / "serve.lock"
    lock.write_text(lock.read_text() + "torch==2.13.0\n--find-links /opt/wheels\n")
    result = check(copy)
    assert result.returncode == 1
    assert "serve.lock:" in result.stdout and "torch==2.13.0 has no --hash" in result.stdout
    assert "requirements/serve.lock: pins torch, which must stay out of the locks" in result.stdout
    assert "local path or find-links" in result.stdout


def test_locks_pinning_a_package_differently_fail(copy: Path) -> None:
    numpy = pin(copy / "requirements" / "serve.lock", "numpy")
    edit(copy / "requirements" / "dev.lock", f"\nnumpy=={numpy} ", "\nnumpy==99.0 ")
    result = check(copy)
    assert result.returncode == 1
    assert f"numpy is pinned differently: dev.lock 99.0, serve.lock {numpy}" in result.stdout
