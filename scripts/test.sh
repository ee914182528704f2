#!/usr/bin/env bash
# Run the test suite (default: fast tests; pass -m slow for the long ones) and ruff.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_venv.sh
# Idle OpenMP threads sleep instead of spinning: on shared 2-core machines spinning made
# kernel code 4-25x slower.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
venv="${NTKIT_VENV:-$root/.venv}"
"$venv/bin/ruff" check src tests benchmarks
exec "$venv/bin/python" -m pytest "$@"
