#!/usr/bin/env bash
# Refresh the hash-locked requirements from pyproject.toml (pip-tools):
#   requirements/dev.lock     .[dev] (with extras data and ml): scripts/setup.sh, CI
#   requirements/serve.lock   runtime dependencies only: deploy/Dockerfile.api, deploy/Dockerfile.worker
#   requirements/torch-cpu.txt  torch==X+cpu and its wheel hash, X the version pyproject.toml pins (torch==X):
#                               edit that pin and run this script to move torch
# The locks leave torch out (it is installed first, from its own file or a CUDA index) but pin torch's own
# dependencies; they pin pip, setuptools and wheel too. Pins shared by both locks are equal (serve.lock is
# compiled under dev.lock's pins).
#
#   scripts/lock.sh                        re-resolve, keeping every existing pin that pyproject.toml still allows
#   scripts/lock.sh --upgrade              move every pin to the newest release pyproject.toml allows
#   scripts/lock.sh --upgrade-package NAME other arguments go to both pip-compile runs
#
# Resolves against PyPI alone (LOCK_INDEX_URL overrides): the machine's pip configuration (local mirrors,
# find-links, constraints) is ignored, so the hashes are those of PyPI's files. Runs pip-compile from .venv
# when pip-tools is installed there, else from a throw-away venv. Ends with scripts/check_lock.py.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_python.sh

INDEX_URL=${LOCK_INDEX_URL:-https://pypi.org/simple}
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
TORCH_FIND_LINKS=${TORCH_FIND_LINKS:-/opt/wheels}  # a local copy of the CPU wheel, if there is one

PYTHON=$(find_python)
# Keep the configured CA bundle (a proxy may need it), drop everything else of the machine's pip configuration.
if [ -z "${PIP_CERT:-}" ]; then
  PIP_CERT=$("$PYTHON" -m pip config list 2>/dev/null | sed -n "s/^[a-z:]*\.cert='\(.*\)'$/\1/p" | tail -n1 || true)
  if [ -n "$PIP_CERT" ]; then export PIP_CERT; else unset PIP_CERT; fi
fi
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
unset PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_CONSTRAINT PIP_NO_INDEX PIP_REQUIRE_HASHES PIP_NO_DEPS
export PIP_INDEX_URL=$INDEX_URL

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p requirements

if [ -x .venv/bin/pip-compile ]; then
  tools=.venv/bin
else
  "$PYTHON" -m venv "$tmp/venv"
  tools=$tmp/venv/bin
  # the pip and pip-tools that dev.lock pins, if it exists yet
  pin() { sed -n "s/^\($1==[^ ]*\).*/\1/p" requirements/dev.lock 2>/dev/null; }
  "$tools/python" -m pip install --quiet "$(pin pip || true)" "$(pin pip-tools)" 2>/dev/null \
    || "$tools/python" -m pip install --quiet "pip-tools>=7.6,<7.7"
fi
"$tools/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || { echo "pip-compile must run on CPython 3.11 (the interpreter the locks are for)" >&2; exit 1; }

# torch: the version pyproject.toml pins (==X), CPU build X+cpu
torch_version=$("$tools/python" - <<'EOF'
import tomllib
from packaging.requirements import Requirement
with open("pyproject.toml", "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
(req,) = [Requirement(d) for d in deps if Requirement(d).name == "torch"]
(spec,) = req.specifier
assert spec.operator == "==" and "+" not in spec.version, f"pyproject.toml must pin torch==X, not {req}"
print(spec.version)
EOF
)
torch_cpu=${TORCH_CPU_VERSION:-$torch_version+cpu}
wheel_dir=$tmp/torch
mkdir -p "$wheel_dir"
local_wheel=$(ls "$TORCH_FIND_LINKS"/torch-"$torch_cpu"-cp311-cp311-manylinux*_x86_64.whl 2>/dev/null | head -n1 || true)
if [ -n "$local_wheel" ]; then
  ln -s "$local_wheel" "$wheel_dir/"
else
  "$tools/python" -m pip download --quiet --no-deps --only-binary :all: --index-url "$TORCH_CPU_INDEX" \
    --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp -d "$wheel_dir" "torch==$torch_cpu"
fi
wheel=$(ls "$wheel_dir"/torch-*.whl | head -n1)
torch_hash=$(sha256sum "$wheel" | cut -d' ' -f1)
cat >requirements/torch-cpu.txt <<EOF
# torch, CPU build: installed first, with --no-deps (requirements/*.lock pin its dependencies, not torch):
#   pip install --require-hashes --no-deps -r requirements/torch-cpu.txt
# Written by scripts/lock.sh from $(basename "$wheel")
# (CPython 3.11, Linux x86_64). Where that file is not at hand (pip's find-links), pip fetches it from:
--extra-index-url $TORCH_CPU_INDEX

torch==$torch_cpu \\
    --hash=sha256:$torch_hash
EOF
echo "torch==$torch_cpu" >"$tmp/torch.txt"

verbosity=--quiet; [ -z "${LOCK_VERBOSE:-}" ] || verbosity=--verbose  # LOCK_VERBOSE=1: show the resolution
compile=("$tools/pip-compile" "$verbosity" --no-config --generate-hashes --strip-extras --all-build-deps
  # Pin pip/setuptools/wheel (no longer "unsafe" once --unsafe-package is given); list torch and the
  # project itself (dev's self-reference cds-service[data,ml]) as comments only, their dependencies pinned.
  --unsafe-package torch --unsafe-package cds-service --no-allow-unsafe
  --no-emit-index-url --no-emit-find-links --no-emit-trusted-host
  --index-url "$INDEX_URL" --find-links "$wheel_dir" --constraint "$tmp/torch.txt")
export CUSTOM_COMPILE_COMMAND="scripts/lock.sh"  # shown in the locks' header

# pip-tools warns that the torch/cds-service comment lines leave the locks incomplete; they are meant to.
quiet_unsafe() { grep -v '^The generated requirements file may be rejected by pip install' >&2 || true; }
"${compile[@]}" "$@" --extra dev --output-file requirements/dev.lock pyproject.toml 2> >(quiet_unsafe)
"$tools/python" scripts/check_lock.py --stamp dev.lock
"${compile[@]}" "$@" --constraint requirements/dev.lock --output-file requirements/serve.lock pyproject.toml \
  2> >(quiet_unsafe)
"$tools/python" scripts/check_lock.py --stamp serve.lock
"$tools/python" scripts/check_lock.py
