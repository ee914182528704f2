"""Independent routes for the convolutional kernels (used by test_conv*.py, test_pooling.py).

- :func:`reference_kernel`: the CNTK recursion written naively, position by position with
  explicit index arithmetic for the padding (NumPy, no shared code with ntkit), on the full
  ``(n, n, P, P)`` covariance of all pairs — small images only.
- :func:`empirical_ntk` / :func:`monte_carlo`: kernels of finite networks from
  ``arch.build`` (``torch.func`` Jacobians), the Monte-Carlo oracle.
"""

from __future__ import annotations

import contextlib
import itertools
import math

import numpy as np
import torch
from torch.func import functional_call, jacrev, vmap


# --------------------------------------------------------------------------- naive recursion
def _positions(shape):
    return list(itertools.product(*[range(n) for n in shape]))


def _source(p_out, offset, stride, left, shape, padding):
    """Input position read by output position ``p_out`` at window offset ``offset``."""
    src = []
    for p, o, s, lft, n in zip(p_out, offset, stride, left, shape):
        i = s * p + o - lft
        if padding == "circular":
            i %= n
        elif not 0 <= i < n:
            return None
        src.append(i)
    return tuple(src)


def _geometry(shape, kernel, stride, padding):
    outs, lefts = [], []
    for n, k, s in zip(shape, kernel, stride):
        if padding == "valid":
            outs.append((n - k) // s + 1)
            lefts.append(0)
        else:
            out = math.ceil(n / s)
            total = max((out - 1) * s + k - n, 0)
            outs.append(out)
            lefts.append(total // 2)
    return tuple(outs), tuple(lefts)


def _conv(K, shape, kernel, stride, padding):
    """``Σ_o K[.., src(p, o), src(q, o)]`` (same offset for both), per pair (leading axes)."""
    out_shape, left = _geometry(shape, kernel, stride, padding)
    pin, pout = _positions(shape), _positions(out_shape)
    index = {p: i for i, p in enumerate(pin)}
    new = np.zeros((*K.shape[:-2], len(pout), len(pout)))
    offsets = _positions(kernel)
    for a, p in enumerate(pout):
        for b, q in enumerate(pout):
            total = 0.0
            for o in offsets:
                sp = _source(p, o, stride, left, shape, padding)
                sq = _source(q, o, stride, left, shape, padding)
                if sp is not None and sq is not None:
                    total = total + K[..., index[sp], index[sq]]
            new[..., a, b] = total
    return new, out_shape


def _pool(K, shape, kernel, stride, padding):
    """``Σ_{o, o'} K[.., src(p, o), src(q, o')]`` (independent offsets)."""
    out_shape, left = _geometry(shape, kernel, stride, padding)
    pin, pout = _positions(shape), _positions(out_shape)
    index = {p: i for i, p in enumerate(pin)}
    new = np.zeros((*K.shape[:-2], len(pout), len(pout)))
    offsets = _positions(kernel)
    for a, p in enumerate(pout):
        for b, q in enumerate(pout):
            total = 0.0
            for o in offsets:
                sp = _source(p, o, stride, left, shape, padding)
                if sp is None:
                    continue
                for o2 in offsets:
                    sq = _source(q, o2, stride, left, shape, padding)
                    if sq is not None:
                        total = total + K[..., index[sp], index[sq]]
            new[..., a, b] = total
    return new, out_shape


def _relu(nngp, ntk):
    """Arc-cosine kernel (Cho & Saul 2009) with arccos, variances from the pair diagonals."""
    n = nngp.shape[0]
    if nngp.ndim == 4:
        var = np.stack([np.diag(nngp[i, i]) for i in range(n)])  # (n, P)
        q11 = var[:, None, :, None]
        q22 = var[None, :, None, :]
    else:
        var = np.diag(nngp)
        q11, q22 = var[:, None], var[None, :]
    norm = np.sqrt(q11 * q22)
    rho = np.clip(nngp / norm, -1.0, 1.0)
    theta = np.arccos(rho)
    dot = (np.pi - theta) / (2 * np.pi)
    new = (norm * (np.sin(theta) + (np.pi - theta) * np.cos(theta))) / (2 * np.pi)
    return new, ntk * dot


def reference_kernel(layers, x):
    """NNGP and NTK ``(n, n)`` (or spatial) of ``x (n, C, *S)`` through ``layers``.

    ``layers``: tuples ``("conv", kernel, stride, padding, W_std, b_std)``, ``("relu",)``,
    ``("avgpool", kernel, stride, padding)``, ``("gap",)``, ``("flatten",)``,
    ``("dense", W_std, b_std)``. Everything in float64 with Python loops over positions.
    """
    x = np.asarray(x, dtype=np.float64)
    n, c = x.shape[:2]
    shape = x.shape[2:]
    flat = x.reshape(n, c, -1)
    nngp = np.einsum("icp,jcq->ijpq", flat, flat) / c
    ntk = np.zeros_like(nngp)
    spatial = True
    for layer in layers:
        kind = layer[0]
        if kind == "conv":
            _, kernel, stride, padding, w, b = layer
            size = math.prod(kernel)
            summed, new_shape = _conv(nngp, shape, kernel, stride, padding)
            summed_ntk, _ = _conv(ntk, shape, kernel, stride, padding)
            nngp = w**2 * summed / size + (b or 0.0) ** 2
            ntk = nngp + w**2 * summed_ntk / size
            shape = new_shape
        elif kind == "avgpool":
            _, kernel, stride, padding = layer
            size = math.prod(kernel) ** 2
            nngp, new_shape = _pool(nngp, shape, kernel, stride, padding)
            ntk, _ = _pool(ntk, shape, kernel, stride, padding)
            nngp, ntk, shape = nngp / size, ntk / size, new_shape
        elif kind == "relu":
            nngp, ntk = _relu(nngp, ntk)
        elif kind == "gap":
            nngp, ntk, spatial = nngp.mean((-2, -1)), ntk.mean((-2, -1)), False
        elif kind == "flatten":
            nngp = np.diagonal(nngp, axis1=-2, axis2=-1).mean(-1)
            ntk = np.diagonal(ntk, axis1=-2, axis2=-1).mean(-1)
            spatial = False
        elif kind == "dense":
            _, w, b = layer
            assert not spatial
            nngp = w**2 * nngp + (b or 0.0) ** 2
            ntk = nngp + w**2 * ntk
        else:  # pragma: no cover
            raise ValueError(kind)
    return nngp, ntk


# --------------------------------------------------------------------------- finite networks
def empirical_ntk(model: torch.nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None):
    """``Σ_o <∂f_o(x)/∂w, ∂f_o(x')/∂w>`` by ``vmap(jacrev)``: ``(n1, n2)`` (traced over outputs)."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(p, x):
        return functional_call(model, p, (x[None],)).reshape(-1)

    def jac(x):
        j = vmap(jacrev(f), (None, 0))(params, x)
        return torch.cat([t.reshape(x.shape[0], t.shape[1], -1) for t in j.values()], dim=2)

    j1 = jac(x1)
    j2 = j1 if x2 is None else jac(x2)
    return torch.einsum("iop,jop->ij", j1, j2)


def monte_carlo_nngp(arch, x, seeds):
    """The output covariance over seeds and outputs: ``(n, n)``.

    Each output of the readout is a draw of the Gaussian process, so the estimate averages
    ``f_o(x) f_o(x')`` over outputs and seeds.
    """
    outer = []
    for seed in seeds:
        with torch.no_grad():
            out = arch.build(tuple(x.shape[1:]), seed=seed)(x)
        outer.append(out @ out.T / out.shape[1])
    return torch.stack(outer).mean(0)


def ntkit_arch(layers, channels: int = 16, readout: int = 1):
    """The ntkit architecture of a :func:`reference_kernel` spec (``channels`` per Conv)."""
    import ntkit as nk
    from ntkit.infinite.conv import Conv
    from ntkit.infinite.pooling import AvgPool, Flatten, GlobalAvgPool

    out = []
    for layer in layers:
        kind = layer[0]
        if kind == "conv":
            _, kernel, stride, padding, w, b = layer
            out.append(Conv(channels, kernel, stride, padding, W_std=w, b_std=b))
        elif kind == "avgpool":
            out.append(AvgPool(layer[1], layer[2], layer[3]))
        elif kind == "relu":
            out.append(nk.ReLU())
        elif kind == "gap":
            out.append(GlobalAvgPool())
        elif kind == "flatten":
            out.append(Flatten())
        elif kind == "dense":
            out.append(nk.Dense(readout, W_std=layer[1], b_std=layer[2]))
    return nk.serial(*out)


@contextlib.contextmanager
def one_thread():
    """Run with one torch thread: the test tensors are small, and on shared busy cores two
    spinning OpenMP threads are many times slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
