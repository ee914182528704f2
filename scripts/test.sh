#!/usr/bin/env bash
# Run the test suite (default: fast tests; pass -m slow for the long ones) and ruff.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_venv.sh
venv="${NTKIT_VENV:-$root/.venv}"
"$venv/bin/ruff" check src tests benchmarks
exec "$venv/bin/python" -m pytest "$@"
