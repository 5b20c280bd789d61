#!/usr/bin/env bash
# Create .venv and install exactly the locked development set: torch first, then requirements/dev.lock
# (every other package of .[dev], pinned, hash-checked, no resolution), then this project without dependencies,
# then `pip check`. Refresh the lock with scripts/lock.sh; scripts/check_lock.py checks it against pyproject.toml.
#
#   scripts/setup.sh                          torch 2.13.0+cpu, hash-checked, from requirements/torch-cpu.txt
#   TORCH_REQUIREMENTS=FILE scripts/setup.sh  torch from another hashed requirements file
#   TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" scripts/setup.sh
#                                             GPU host: pip arguments for a CUDA build, installed with its own
#                                             dependencies (nvidia-*, triton); NOT hash-checked
#   PYTHON=/path/to/python3.11 scripts/setup.sh
# Works under `env -i` (finds pyenv's or the system's CPython 3.11, see scripts/_python.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_python.sh
LOCK=${LOCK:-requirements/dev.lock}
TORCH_REQUIREMENTS=${TORCH_REQUIREMENTS:-requirements/torch-cpu.txt}

if [ ! -x .venv/bin/python ]; then
  PYTHON=$(find_python)
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || { echo ".venv is not CPython 3.11 (the locks are compiled for 3.11): remove it and run again" >&2; exit 1; }

pip=(.venv/bin/python -m pip --disable-pip-version-check install --quiet)
if [ -n "${TORCH_SPEC:-}" ]; then
  read -ra torch_args <<<"$TORCH_SPEC"
  echo "setup.sh: torch from TORCH_SPEC ($TORCH_SPEC) is not hash-checked" >&2
  "${pip[@]}" "${torch_args[@]}"
else
  "${pip[@]}" --require-hashes --no-deps -r "$TORCH_REQUIREMENTS"
fi
"${pip[@]}" --require-hashes --no-deps -r "$LOCK"
# setuptools and wheel (the build backend) come from the lock, so no unpinned build environment either
"${pip[@]}" --no-deps --no-build-isolation -e .
.venv/bin/python -m pip --disable-pip-version-check check

# A .venv from an earlier install may hold packages the lock no longer lists: name them.
.venv/bin/python - "$LOCK" <<'EOF'
import importlib.metadata as md, re, sys
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as norm
keep = {norm(m) for m in re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", open(sys.argv[1]).read(), re.M)}
todo, seen = ["torch", "cds-service"], set()  # and whatever they pull in (a CUDA torch: nvidia-*, triton)
while todo:
    name = todo.pop()
    if name in seen:
        continue
    seen.add(name)
    try:
        reqs = md.requires(name) or []
    except md.PackageNotFoundError:
        continue
    todo += [norm(r.name) for r in map(Requirement, reqs) if not r.marker or r.marker.evaluate({"extra": ""})]
extra = sorted({norm(d.metadata["Name"]) for d in md.distributions()} - keep - seen)
if extra:
    print(f"setup.sh: .venv also holds {', '.join(extra)}, not in {sys.argv[1]}; "
          "for exactly the lock: rm -rf .venv && scripts/setup.sh", file=sys.stderr)
EOF
echo "cds-service installed in .venv from $LOCK ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
