"""Timeline building speed against a bare `json.loads` of the same files, and peak memory of a dataset build.

    python benchmarks/timeline_speed.py --fhir COHORT/fhir [--patients 1000]

Prints resources/second for both and their ratio (the figure to quote: how much our lenient reading and
timeline building cost over just parsing the JSON), then the peak resident memory of `data build` over
the same patients, measured in a child process so that this process's own memory does not count.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cds_service.fhir.reader import ReadReport, fhir_files
from cds_service.timeline.builder import build_timelines


def count_resources(doc: object) -> int:
    if isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
        return sum(count_resources(e.get("resource")) for e in doc.get("entry") or [])
    return 1 if isinstance(doc, dict) else 0


def bare_json(files: list[Path]) -> tuple[int, float]:
    start, n = time.perf_counter(), 0
    for path in files:
        n += count_resources(json.loads(path.read_bytes()))
    return n, time.perf_counter() - start


def timelines(files: list[Path]) -> tuple[int, float, int]:
    report = ReadReport()
    start = time.perf_counter()
    events = sum(len(t.events) + len(t.notes) for t in build_timelines(files, report))
    return report.resources, time.perf_counter() - start, events


def peak_memory_of_build(files: list[Path]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        link_dir = Path(tmp) / "fhir"
        link_dir.mkdir()
        for path in files:
            (link_dir / path.name).symlink_to(path.resolve())
        cds = shutil.which("cds-service") or sys.executable
        command = [cds] if cds.endswith("cds-service") else [cds, "-m", "cds_service.cli"]
        subprocess.run(
            [*command, "data", "build", "--fhir", str(link_dir), "--out", str(Path(tmp) / "ds")],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB -> MiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fhir", type=Path, required=True)
    parser.add_argument("--patients", type=int, default=1000, help="files (Synthea: patients) to use")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()

    files = fhir_files(args.fhir)[: args.patients]
    size_mb = sum(p.stat().st_size for p in files) / 2**20
    print(f"input: {len(files)} files, {size_mb:.0f} MiB")
    n_json, t_json = bare_json(files)
    n_tl, t_tl, events = timelines(files)
    print(f"json.loads only     : {n_json / t_json:>10,.0f} resources/s ({t_json:.1f} s)")
    print(f"timeline building   : {n_tl / t_tl:>10,.0f} resources/s ({t_tl:.1f} s, {events:,} events+notes)")
    print(f"ratio timeline/json : {(n_tl / t_tl) / (n_json / t_json):.2f}")
    if not args.skip_memory:
        print(f"peak RSS of `data build` over {len(files)} patients: {peak_memory_of_build(files):,.0f} MiB")


if __name__ == "__main__":
    main()
