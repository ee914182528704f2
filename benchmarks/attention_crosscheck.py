"""Kernel cross-check of the issue-16 layers against neural-tangents (not a timing).

Transformer blocks with every attention mechanism and positional embedding (and the
``1/√d_k`` identity variant), a masked one
(neural-tangents' ``mask_constant`` against ntkit's ``mask1``), Dropout and FanInProd, on
the same inputs; prints the largest relative difference of each NNGP/NTK. Seen: at most
3e-13, except the Dropout NTK (2e-9: neural-tangents' ReLU NTK at correlation 1).

Reproduce:
    .venv/bin/python benchmarks/attention_crosscheck.py --nt-python .venv-nt/bin/python
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import ntkit as nk

ROOT = Path(__file__).resolve().parents[1]

NT_SIDE = r'''
import warnings; warnings.filterwarnings("ignore")
import sys
import numpy as np, jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
from neural_tangents import stax
x = np.random.default_rng(0).standard_normal((5, 6, 3))  # (n, T, C)
xf = np.random.default_rng(1).standard_normal((5, 4))
out = {}
def att(**kw):
    return stax.GlobalSelfAttention(8, 8, 8, 2, linear_scaling=True, W_key_std=1.3, b_std=0.2, **kw)
def block(a):
    return stax.serial(stax.Dense(8, 1.0, 0.3), stax.LayerNorm(axis=-1), stax.FanOut(2),
                       stax.parallel(a, stax.Identity()), stax.FanInSum(), stax.LayerNorm(axis=(1, 2)),
                       stax.Dense(8, 1.4, 0.1), stax.Relu(), stax.Dense(8), stax.GlobalAvgPool(),
                       stax.Dense(1))
cases = {
  "softmax": block(att()), "identity": block(att(attention_mechanism="IDENTITY")),
  "relu_sum": block(att(attention_mechanism="RELU", pos_emb_type="SUM")),
  "abs_concat_val": block(att(attention_mechanism="ABS", pos_emb_type="CONCAT", val_pos_emb=True)),
  "decay": block(att(pos_emb_type="SUM", pos_emb_decay_fn=lambda d: jnp.exp(-d), val_pos_emb=True)),
}
for name, (_, _, kf) in cases.items():
    k = kf(x, None, ("nngp", "ntk"))
    out[name] = np.stack([np.asarray(k.nngp), np.asarray(k.ntk)])
_, _, kf = block(stax.GlobalSelfAttention(8, 8, 8, 2, linear_scaling=False, attention_mechanism="IDENTITY",
                                          W_key_std=1.2, W_out_std=0.9, b_std=0.2))
k = kf(x, None, ("nngp", "ntk"))
out["sqrt_identity"] = np.stack([np.asarray(k.nngp), np.asarray(k.ntk)])
# masks: mask_constant
xm = x.copy(); xm[0, 4:, :] = -999.; xm[2, 1:3, :] = -999.
_, _, kf = block(att())
k = kf(xm, None, ("nngp", "ntk"), mask_constant=-999.)
out["masked"] = np.stack([np.asarray(k.nngp), np.asarray(k.ntk)])
# dropout, prod on flat
_, _, kf = stax.serial(stax.Dense(8, 1.5, 0.1), stax.Relu(), stax.Dropout(0.6), stax.Dense(1, 1.2, 0.3))
k = kf(xf, None, ("nngp", "ntk")); out["dropout"] = np.stack([np.asarray(k.nngp), np.asarray(k.ntk)])
_, _, kf = stax.serial(stax.Dense(8, 1.0, 0.2), stax.Relu(), stax.FanOut(2),
                       stax.parallel(stax.Dense(8, 1.3), stax.Dense(8, 1.1, 0.3)), stax.FanInProd(),
                       stax.Dense(1))
k = kf(xf, None, ("nngp", "ntk")); out["prod"] = np.stack([np.asarray(k.nngp), np.asarray(k.ntk)])
np.savez(sys.argv[1], **out)
'''


def att(**kw):
    return nk.GlobalSelfAttention(8, 8, 8, 2, W_key_std=1.3, b_std=0.2, **kw)


def block(a):
    return nk.serial(nk.Dense(8, 1.0, 0.3), nk.LayerNorm(axis=1), nk.FanOut(2), nk.parallel(a, nk.Identity()),
                     nk.FanInSum(), nk.LayerNorm(axis=(1, 2)), nk.Dense(8, 1.4, 0.1), nk.ReLU(), nk.Dense(8),
                     nk.GlobalAvgPool(), nk.Dense(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nt-python", type=Path, default=ROOT / ".venv-nt" / "bin" / "python")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "nt.npz")
        proc = subprocess.run([str(args.nt_python), "-c", NT_SIDE, str(path)], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"neural-tangents side failed: {proc.stderr.strip().splitlines()[-1:]}")
        ref = dict(np.load(path))
    x = np.random.default_rng(0).standard_normal((5, 6, 3))
    xt = torch.from_numpy(x.transpose(0, 2, 1).copy())   # (n, C, T)
    xf = torch.from_numpy(np.random.default_rng(1).standard_normal((5, 4)))
    cases = {
        "softmax": block(att()), "identity": block(att(attention_mechanism="identity")),
        "relu_sum": block(att(attention_mechanism="relu", pos_emb_type="sum")),
        "abs_concat_val": block(att(attention_mechanism="abs", pos_emb_type="concat", val_pos_emb=True)),
        "decay": block(att(pos_emb_type="sum", pos_emb_decay_fn=lambda d: torch.exp(-d), val_pos_emb=True)),
    }
    cases["sqrt_identity"] = block(nk.GlobalSelfAttention(8, 8, 8, 2, linear_scaling=False,
                                                          attention_mechanism="identity", W_key_std=1.2,
                                                          W_out_std=0.9, b_std=0.2))
    kernels = {name: arch.kernel(xt) for name, arch in cases.items()}
    mask = torch.zeros(5, 6, dtype=torch.bool)
    mask[0, 4:] = True
    mask[2, 1:3] = True
    kernels["masked"] = block(att()).kernel(xt, mask1=mask)
    kernels["dropout"] = nk.serial(nk.Dense(8, 1.5, 0.1), nk.ReLU(), nk.Dropout(0.6),
                                   nk.Dense(1, 1.2, 0.3)).kernel(xf)
    kernels["prod"] = nk.serial(nk.Dense(8, 1.0, 0.2), nk.ReLU(), nk.FanOut(2),
                                nk.parallel(nk.Dense(8, 1.3), nk.Dense(8, 1.1, 0.3)), nk.FanInProd(),
                                nk.Dense(1)).kernel(xf)
    for name, k in kernels.items():
        diffs = []
        for i, field in enumerate(("nngp", "ntk")):
            ours, theirs = k.get(field).numpy(), ref[name][i]
            diffs.append(float(np.abs(ours - theirs).max() / np.abs(theirs).max()))
        print(f"{name:>15}  nngp {diffs[0]:.1e}  ntk {diffs[1]:.1e}")


if __name__ == "__main__":
    main()
