"""Shared fixtures: small cohorts from the real generators, made once per test session."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cds_service.data.synth import synthesize

# Modules whose every test trains a model, generates a cohort of its own or drives worker processes: the
# `slow` marker (`pytest -m "not slow"` is the inner loop; CI runs everything). One list, so a new slow
# module is marked in one place; single slow tests elsewhere carry `@pytest.mark.slow` themselves.
SLOW_MODULES = {"test_model", "test_celery_backend", "test_bulk", "test_worker_errors"}

# A verbatim copy of ../shared/cds-hooks-examples (see its README for provenance and licence).
SPEC_EXAMPLES = Path(__file__).parent / "fixtures" / "cds-hooks-examples"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


def load_example(name: str) -> Any:
    text = (SPEC_EXAMPLES / name).read_text()
    return json.loads("{" + text + "}") if name.endswith(".fragment.json") else json.loads(text)


@pytest.fixture(scope="session")
def synthea_fhir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthea")
    return synthesize("synthea", patients=6, seed=7, out=out)


@pytest.fixture(scope="session")
def clinosim_fhir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clinosim")
    return synthesize("clinosim", patients=20, seed=7, out=out)


def bundle_resources(fhir_dir: Path) -> Iterator[tuple[Path, list[dict[str, Any]]]]:
    for path in sorted(fhir_dir.glob("*.json")):
        bundle = json.loads(path.read_text())
        yield path, [e["resource"] for e in bundle.get("entry", [])]


@pytest.fixture(scope="session")
def synthea_dataset(synthea_fhir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cds_service.data.build import BuildOptions, build_dataset

    out = tmp_path_factory.mktemp("synthea-ds") / "ds"
    build_dataset([synthea_fhir], out, BuildOptions(min_label_count=1, min_token_count=1, note_vocab_size=500))
    return out
