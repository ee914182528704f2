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
if [ ! -x "$venv/bin/python" ]; then
  echo "ntkit: creating virtual environment $venv with $python" >&2
  "$python" -m venv "$venv"
fi
stamp="$venv/.ntkit-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "ntkit: installing dependencies into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
  # torch pinned to the release whose CPU wheel lies on these machines' disk.
  "$venv/bin/python" -m pip install --quiet "torch==2.13.0"
  "$venv/bin/python" -m pip install --quiet -e ".[test,mnist,mnist1d,dask]"
  echo "$want" > "$stamp"
fi
