#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv.
# Idempotent: reinstalls only when pyproject.toml changed since the last install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${NTKIT_VENV:-$root/.venv}"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  for candidate in python3.11 python3.12 python3.10 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python="$candidate"; break; fi
  done
fi
say() { echo "ntkit setup: $*" >&2; }
if [ ! -x "$venv/bin/python" ]; then
  say "creating the virtual environment $venv with $python (first run only)"
  "$python" -m venv "$venv"
fi
stamp="$venv/.ntkit-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "pyproject.toml is new or changed: installing dependencies into $venv (a few minutes)"
  say "[1/3] upgrading pip"
  "$venv/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
  # torch pinned to the release whose CPU wheel lies on these machines' disk.
  say "[2/3] installing torch==2.13.0 (CPU)"
  "$venv/bin/python" -m pip install --quiet "torch==2.13.0"
  say "[3/3] installing ntkit (editable) with its extras test, mnist, mnist1d, dask"
  "$venv/bin/python" -m pip install --quiet -e ".[test,mnist,mnist1d,dask]"
  echo "$want" > "$stamp"
  say "done"
else
  say "$venv is up to date with pyproject.toml"
fi
