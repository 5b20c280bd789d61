"""`cds-service data synth`: synthetic FHIR R4 cohorts from the two independent PyPI generators.

Both generators are run as their own command-line programs (installed by the `data` extra), so
their output is exactly what they write for anyone else: Synthea-style per-patient transaction
Bundles, or clinosim's bulk-export NDJSON.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal

Generator = Literal["synthea", "clinosim"]
GENERATORS: tuple[Generator, ...] = ("synthea", "clinosim")

# clinosim simulates a hospital's catchment population over one year; about 55% of residents
# appear as patients. We ask for enough residents to reach the requested patient count.
CLINOSIM_PATIENTS_PER_RESIDENT = 0.55


class GeneratorMissing(RuntimeError):
    pass


def synth_command(generator: Generator, patients: int, seed: int, out: Path, threads: int = 2) -> list[str]:
    if generator == "synthea":
        return ["synthea", "-p", str(patients), "-s", str(seed), "--threads", str(threads), "-o", str(out)]
    residents = max(10, math.ceil(patients / CLINOSIM_PATIENTS_PER_RESIDENT))
    return [
        "clinosim",
        "simulate",
        "-o",
        str(out),
        "-p",
        str(residents),
        "-s",
        str(seed),
        "--country",
        "US",
        "--format",
        "fhir-r4",
        "--end",
        "2025-12-31",
    ]


def fhir_output_dir(generator: Generator, out: Path) -> Path:
    """Where the generator leaves its FHIR files under `out`."""
    return out / ("fhir" if generator == "synthea" else "fhir_r4")


def find_executable(name: str) -> str | None:
    """The generator's console script: beside this interpreter first (a venv that is not activated), then PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)


def synthesize(generator: Generator, patients: int, seed: int, out: Path, threads: int = 2) -> Path:
    """Run a generator (its own progress bar shows on the terminal); returns the FHIR directory."""
    command = synth_command(generator, patients, seed, out, threads)
    executable = find_executable(command[0])
    if executable is None:
        raise GeneratorMissing(f"{command[0]} is not installed: pip install 'cds-service[data]'")
    command[0] = executable
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(command, check=True)
    fhir_dir = fhir_output_dir(generator, out)
    if not fhir_dir.is_dir():
        raise RuntimeError(f"{generator} finished but wrote no FHIR directory at {fhir_dir}")
    return fhir_dir
