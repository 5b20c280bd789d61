#!/usr/bin/env python3
"""Fail when requirements/*.lock and pyproject.toml disagree (offline; stdlib + packaging).

    python scripts/check_lock.py [--root DIR]      # exit 0: consistent; exit 1: prints every disagreement

Checks, for each lock in LOCKS:
  * its header records the pyproject entries it was compiled from (`# pyproject-from:` lines: requires-python,
    build-system.requires, dependencies, the extras it covers) and their sha256 (`# pyproject-deps-sha256:`),
    both written by scripts/lock.sh; a digest that no longer matches pyproject.toml fails, naming the entries
    added, removed or changed (catches removed dependencies and changed ranges the pins may still satisfy);
  * every requirement of [project].dependencies and of the extras the lock covers (self-references such as
    `cds-service[data,ml]` resolved) is pinned, at a version that satisfies the range;
  * every pin is `name==version` with at least one --hash, no torch (it lives in requirements/torch-*.txt),
    no local paths or file: URLs, and packages pinned by several locks are pinned at the same version.
and that requirements/torch-cpu.txt pins a hashed torch that satisfies pyproject's torch requirement.

scripts/lock.sh calls `--stamp LOCK` after pip-compile to write those header lines.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

# lock file (under requirements/) -> the extras of the project it covers; scripts/lock.sh compiles the same set.
LOCKS: dict[str, tuple[str, ...]] = {"dev.lock": ("dev",), "serve.lock": ()}
TORCH_FILE = "torch-cpu.txt"
UNLOCKED = {"torch"}  # installed from TORCH_FILE (CPU) or the CUDA index (GPU worker), before the locks
DIGEST_RE = re.compile(r"^#[ \t]*pyproject-deps-sha256:[ \t]*([0-9a-f]{64})[ \t]*$", re.M)
EXTRAS_RE = re.compile(r"^#[ \t]*pyproject-extras:[ \t]*(.*?)[ \t]*$", re.M)
FROM_RE = re.compile(r"^#[ \t]*pyproject-from:[ \t]*(.*?)[ \t]*$", re.M)
PIP_TOOLS_UNSAFE_WARNING = (
    "# WARNING: The following packages were not pinned, but pip requires them to be\n"
    "# pinned when the requirements file includes hashes and the requirement is not\n"
    "# satisfied by a package already installed. Consider using the --allow-unsafe flag.\n"
)
# The locks are compiled for (and installed on) CPython 3.11 on Linux.
TARGET_ENV: dict[str, str] = {
    **{key: str(value) for key, value in default_environment().items()},
    "python_version": "3.11",
    "sys_platform": "linux",
    "platform_system": "Linux",
}


def load_pyproject(root: Path) -> dict[str, Any]:
    with (root / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def extras_closure(pyproject: dict[str, Any], extras: tuple[str, ...]) -> list[str]:
    """The extras `extras` pull in, following self-references like `cds-service[data,ml]`."""
    project = pyproject["project"]
    me = canonicalize_name(project["name"])
    optional = project.get("optional-dependencies", {})
    seen: list[str] = []
    todo = list(extras)
    while todo:
        extra = todo.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"pyproject.toml has no extra {extra!r}")
        seen.append(extra)
        for spec in optional[extra]:
            req = Requirement(spec)
            if canonicalize_name(req.name) == me:
                todo.extend(sorted(req.extras))
    return seen


def covered_requirements(pyproject: dict[str, Any], extras: tuple[str, ...]) -> list[tuple[Requirement, str]]:
    """(requirement, where it is declared) for the project's dependencies plus the extras' closure."""
    project = pyproject["project"]
    me = canonicalize_name(project["name"])
    out = [(Requirement(s), "[project] dependencies") for s in project.get("dependencies", [])]
    for extra in extras_closure(pyproject, extras):
        for spec in project["optional-dependencies"][extra]:
            req = Requirement(spec)
            if canonicalize_name(req.name) != me:
                out.append((req, f"[project.optional-dependencies] {extra}"))
    return out


def compiled_from(pyproject: dict[str, Any], extras: tuple[str, ...]) -> list[str]:
    """The pyproject entries a lock is compiled from, one `table: requirement` string each, normalised and sorted."""
    project = pyproject["project"]
    entries = [f"requires-python: {project.get('requires-python', '')}"]
    entries += [f"build-system: {Requirement(s)}" for s in pyproject.get("build-system", {}).get("requires", [])]
    entries += [f"dependencies: {Requirement(s)}" for s in project.get("dependencies", [])]
    for extra in extras_closure(pyproject, extras):
        entries += [f"extra {extra}: {Requirement(s)}" for s in project["optional-dependencies"][extra]]
    return sorted(set(entries))


def digest(entries: list[str]) -> str:
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def entry_key(entry: str) -> tuple[str, str]:
    """(table, normalised package name) of a compiled_from entry; requires-python keys on itself."""
    table, _, spec = entry.partition(": ")
    try:
        return table, canonicalize_name(Requirement(spec).name)
    except InvalidRequirement:
        return table, ""


def logical_lines(text: str) -> list[tuple[int, str]]:
    """Requirement-file lines with comments dropped and backslash continuations joined."""
    out: list[tuple[int, str]] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            out.append((start, buf.strip()))
        buf = ""
    if buf.strip():
        out.append((start, buf.strip()))
    return out


def parse_pins(path: Path, problems: list[str]) -> dict[str, tuple[Version, Requirement]]:
    """name -> (pinned version, requirement) of a hashed requirements file; format problems go to `problems`."""
    pins: dict[str, tuple[Version, Requirement]] = {}
    for n, line in logical_lines(path.read_text()):
        where = f"{path.name}:{n}"
        if re.search(r"(^|[\s=])(file:|/|~|\.{1,2}(/|\s|$))|^(-f|--find-links|-e|--editable)(\s|=)", line):
            problems.append(f"{where}: local path or find-links in a lock (must work from PyPI alone): {line}")
            continue
        if line.startswith("-"):
            continue  # --extra-index-url and the like
        spec, *hashes = re.split(r"\s+--hash[=\s]", line)
        try:
            req = Requirement(spec)
        except InvalidRequirement as exc:
            problems.append(f"{where}: not a requirement: {spec} ({exc})")
            continue
        specifiers = list(req.specifier)
        if len(specifiers) != 1 or specifiers[0].operator != "==" or "*" in specifiers[0].version or req.url:
            problems.append(f"{where}: {spec} is not pinned with ==")
            continue
        if not hashes:
            problems.append(f"{where}: {spec} has no --hash")
        name = canonicalize_name(req.name)
        if name in pins:
            problems.append(f"{where}: {name} is pinned twice")
        try:
            pins[name] = (Version(specifiers[0].version), req)
        except InvalidVersion:
            problems.append(f"{where}: {spec}: invalid version")
    return pins


def check(root: Path) -> list[str]:
    problems: list[str] = []
    pyproject = load_pyproject(root)
    reqdir = root / "requirements"
    all_pins: dict[str, dict[str, Version]] = {}
    torch_reqs: list[tuple[Requirement, str]] = []
    for lock, extras in LOCKS.items():
        path = reqdir / lock
        if not path.is_file():
            problems.append(f"requirements/{lock} is missing; run scripts/lock.sh")
            continue
        text = path.read_text()
        recorded_extras = EXTRAS_RE.search(text)
        recorded_digest = DIGEST_RE.search(text)
        recorded_from = FROM_RE.findall(text)
        entries = compiled_from(pyproject, extras)
        if recorded_extras is None or tuple(recorded_extras.group(1).split()) != tuple(extras):
            problems.append(f"requirements/{lock}: header does not record `# pyproject-extras: {' '.join(extras)}`")
        if recorded_digest is None:
            problems.append(f"requirements/{lock}: no `# pyproject-deps-sha256:` header; run scripts/lock.sh")
        elif recorded_digest.group(1) != digest(entries):
            # name what changed, from the entries the header lists
            before = {entry_key(e): e for e in recorded_from}
            now = {entry_key(e): e for e in entries}
            changes = [f"{now[k]} added" for k in now.keys() - before.keys()]
            changes += [f"{before[k]} removed" for k in before.keys() - now.keys()]
            changes += [
                f"{before[k]} is now {now[k].partition(': ')[2]}"
                for k in now.keys() & before.keys()
                if before[k] != now[k]
            ]
            if digest(recorded_from) != recorded_digest.group(1):
                changes = ["the header's pyproject-from lines do not match its digest"]
            problems.append(
                f"requirements/{lock}: stale, pyproject.toml changed since it was compiled "
                f"({'; '.join(sorted(changes)) or 'digest differs'}); run scripts/lock.sh"
            )
        pins = parse_pins(path, problems)
        all_pins[lock] = {name: version for name, (version, _) in pins.items()}
        for name in sorted(UNLOCKED & pins.keys()):
            problems.append(f"requirements/{lock}: pins {name}, which must stay out of the locks")
        env = {**TARGET_ENV, "extra": ""}
        for req, where in covered_requirements(pyproject, extras):
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            name = canonicalize_name(req.name)
            if name in UNLOCKED:
                torch_reqs.append((req, where))
                continue
            if name not in pins:
                problems.append(f"requirements/{lock}: {req} ({where}) is not pinned")
                continue
            version = pins[name][0]
            if not req.specifier.contains(version, prereleases=True):
                problems.append(f"requirements/{lock}: pins {name}=={version}, which does not satisfy {req} ({where})")
    # packages shared by several locks are pinned alike
    names = sorted({n for pins in all_pins.values() for n in pins})
    for name in names:
        versions = {lock: pins[name] for lock, pins in all_pins.items() if name in pins}
        if len(set(versions.values())) > 1:
            problems.append(f"{name} is pinned differently: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    # torch: pinned (with its hash) in its own file, and satisfying pyproject
    torch_path = reqdir / TORCH_FILE
    if not torch_path.is_file():
        problems.append(f"requirements/{TORCH_FILE} is missing")
    else:
        torch_pins = parse_pins(torch_path, problems)
        if "torch" not in torch_pins:
            problems.append(f"requirements/{TORCH_FILE} does not pin torch")
        else:
            version = torch_pins["torch"][0]
            for req, where in torch_reqs:
                if not req.specifier.contains(version, prereleases=True):
                    problems.append(
                        f"requirements/{TORCH_FILE}: pins torch=={version}, which does not satisfy {req} ({where})"
                    )
    return sorted(set(problems), key=problems.index)


def stamp(root: Path, lock: str) -> None:
    """Record in `lock`'s header (after pip-compile's) the pyproject entries it was compiled from and their digest."""
    extras = LOCKS[lock]
    entries = compiled_from(load_pyproject(root), extras)
    path = root / "requirements" / lock
    ours = (DIGEST_RE, EXTRAS_RE, FROM_RE, re.compile(r"^# Checked against pyproject.toml by"))
    lines = [ln for ln in path.read_text().splitlines() if not any(r.match(ln) for r in ours)]
    at = next((i for i, ln in enumerate(lines) if not ln.startswith("#")), len(lines))
    while at > 0 and lines[at - 1].strip() == "#":
        at -= 1
    lines[at:at] = [
        "#",
        "# Checked against pyproject.toml by scripts/check_lock.py:",
        f"# pyproject-extras: {' '.join(extras)}".rstrip(),
        f"# pyproject-deps-sha256: {digest(entries)}",
        *(f"# pyproject-from: {e}" for e in entries),
    ]
    text = "\n".join(lines) + "\n"
    text = text.replace(
        PIP_TOOLS_UNSAFE_WARNING,
        "# Not pinned here, installed apart from the lock: torch (requirements/torch-cpu.txt, or the CUDA\n"
        "# index in deploy/Dockerfile.worker) and this project (pip install --no-deps .):\n",
    )
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1], help="project root")
    parser.add_argument("--stamp", metavar="LOCK", choices=sorted(LOCKS), help="write the digest into LOCK's header")
    parser.add_argument("--extras", metavar="LOCK", choices=sorted(LOCKS), help="print the extras LOCK covers")
    args = parser.parse_args(argv)
    if args.extras:
        print(" ".join(LOCKS[args.extras]))
        return 0
    if args.stamp:
        stamp(args.root, args.stamp)
        return 0
    problems = check(args.root)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} disagreement(s) between pyproject.toml and requirements/; refresh with scripts/lock.sh")
        return 1
    print(f"requirements/ agrees with pyproject.toml ({', '.join(LOCKS)}, {TORCH_FILE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
