# Sourced by scripts/setup.sh and scripts/lock.sh: find the CPython 3.11 the locks are compiled for.
# Works under `env -i`: without PATH bash falls back to a built-in PATH that finds the distribution's
# python3 before pyenv's, and without HOME pyenv is not found, so both get sane defaults here.
# PYTHON=/path/to/python3.11 overrides the search (and must be 3.11).

if [ -z "${HOME:-}" ]; then
  HOME=$(getent passwd "$(id -u)" 2>/dev/null | cut -d: -f6 || true)
  HOME=${HOME:-/root}
fi
export HOME
PATH=${PATH:-/usr/local/bin:/usr/bin:/bin}
PYENV_ROOT=${PYENV_ROOT:-$HOME/.pyenv}
if [ -d "$PYENV_ROOT/shims" ]; then
  case ":$PATH:" in
    *":$PYENV_ROOT/shims:"*) ;;
    *) PATH="$PYENV_ROOT/shims:$PYENV_ROOT/bin:$PATH" ;;
  esac
fi
export PATH

# is_py311 CMD: CMD is a CPython 3.11 that can create virtual environments
is_py311() {
  "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info[:2] != (3, 11))' >/dev/null 2>&1
}

# find_python: print the path of the interpreter to build venvs from
find_python() {
  local candidate
  if [ -n "${PYTHON:-}" ]; then
    if is_py311 "$PYTHON"; then command -v "$PYTHON"; return 0; fi
    echo "PYTHON=$PYTHON is not a CPython 3.11 with venv/ensurepip (requirements/*.lock are compiled for 3.11)" >&2
    return 1
  fi
  for candidate in python3.11 python3 /usr/local/bin/python3.11 /usr/bin/python3.11; do
    if command -v "$candidate" >/dev/null 2>&1 && is_py311 "$candidate"; then
      command -v "$candidate"
      return 0
    fi
  done
  echo "no CPython 3.11 with venv/ensurepip found on PATH=$PATH; set PYTHON=/path/to/python3.11" >&2
  return 1
}
