#!/usr/bin/env bash
# Create .venv-nt with neural-tangents (the peer measured in benchmarks/), CPU jax.
# Only benchmarks use it; the library and its tests never do.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-nt"
python="${PYTHON:-python3.11}"
if [ ! -x "$venv/bin/python" ]; then
  echo "setup_nt_venv: creating $venv with $python" >&2
  "$python" -m venv "$venv"
fi
echo "setup_nt_venv: installing jax 0.4.25 (CPU) and neural-tangents into $venv" >&2
"$venv/bin/python" -m pip install --quiet "jax==0.4.25" "jaxlib==0.4.25" "numpy<2" "scipy<1.13" \
  neural-tangents scikit-learn psutil
"$venv/bin/python" -c "import neural_tangents, jax; print('neural-tangents', neural_tangents.__version__, 'jax', jax.__version__)"
