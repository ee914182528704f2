#!/usr/bin/env bash
# Run the main job: `ntkit lab` on an embedded data set (arguments are passed through).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_venv.sh
venv="${NTKIT_VENV:-$root/.venv}"
echo "ntkit: running 'ntkit lab $*' (progress on stderr; the report folder is printed at the end)" >&2
exec "$venv/bin/ntkit" lab "$@"
