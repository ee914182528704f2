"""The README's Python examples run as written, and say true things about their results.

Every ```python block of README.md is executed in order in one namespace (later blocks use
names defined by earlier ones, as a reader following the page would), then the shapes and
identities the comments state are checked against independent routes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.fixture(scope="module")
def namespace() -> dict:
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 3, "the README lost its examples"
    ns: dict = {"__name__": "readme"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"README.md python block {i + 1}", "exec"), ns)
        except Exception as err:  # report which block broke, with its first line
            first = block.strip().splitlines()[0]
            raise AssertionError(f"README block {i + 1} ({first!r}) raised {err!r}") from err
    return ns


def test_quick_start_shapes_and_identities(namespace):
    ns = namespace
    k, ntk, diag = ns["k"], ns["ntk"], ns["diag"]
    assert k.ntk.shape == k.nngp.shape == (100, 100) and k.ntk.dtype == torch.float64
    assert ntk.shape == (100, 10)
    # cross == block; a point paired with its own copy sits at correlation 1, where the
    # arc-cosine kernels are only Hölder-½ (θ ≈ √(2·δρ)), so those entries agree to ~√ε
    off = ~torch.eye(100, 10, dtype=torch.bool)
    torch.testing.assert_close(ntk[off], k.ntk[:, :10][off], rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.diagonal(ntk), torch.diagonal(k.ntk)[:10], rtol=1e-6, atol=0)
    assert diag.shape == (100,)
    torch.testing.assert_close(diag, torch.diagonal(k.ntk), rtol=1e-12, atol=0)
    # "= nk.mlp(3, 512, 'relu', ...)": the two spellings give one kernel
    import ntkit as nk

    same = nk.mlp(3, 512, "relu", W_std=2**0.5, b_std=0.1).kernel(ns["x"].float(), get="ntk")
    torch.testing.assert_close(same, k.ntk, rtol=1e-12, atol=0)


def test_masked_transformer_block(namespace):
    ns = namespace
    assert ns["k_seq"].ntk.shape == (4, 4)
    assert ns["out"].shape == (4, 1)
    # the mask means "absent": the second sequence (length 4) has the same kernel as its
    # unmasked first four positions would give through the same block
    mask, seq, block = ns["lengths_mask"], ns["seq"], ns["block"]
    assert mask[1].tolist() == [False] * 4 + [True] * 2
    short = block.kernel(seq[1:2, :, :4], get="nngp")
    torch.testing.assert_close(short[0, 0], ns["k_seq"].nngp[1, 1], rtol=1e-10, atol=0)


def test_empirical_examples(namespace):
    import ntkit as nk

    ns = namespace
    net, x, K = ns["net"], ns["x"], ns["K"]
    assert K.shape == (100, 100)
    torch.testing.assert_close(ns["d"], torch.diagonal(K), rtol=1e-10, atol=1e-12)
    assert ns["K_tr"].shape == (6, 6)
    full = nk.empirical_ntk(net, x, ns["x_train"], output="full")     # (n, n2, o, o)
    expected = torch.einsum("ijab,jb->ia", full, ns["v"])
    torch.testing.assert_close(ns["Kv"], expected, rtol=1e-10, atol=1e-10)
    out = net(x)
    torch.testing.assert_close(ns["nngp"], out @ out.T, rtol=1e-10, atol=1e-10)
    assert len(ns["runs"]) == 3


def test_predictions_and_scale_examples(namespace):
    ns = namespace
    assert ns["f_test"].shape == (20,)
    # the matrix-free CG answer is the dense kernel regression's
    import ntkit as nk

    arch, x_big, y_big, x_test = ns["arch"], ns["x_big"], ns["y_big"], ns["x_test"]
    dense = nk.kernel_regression(arch.kernel(x_big, get="ntk"), y_big,
                                 arch.kernel(x_test, x_big, get="ntk"))
    torch.testing.assert_close(ns["f"].reshape(dense.shape).to(dense.dtype), dense,
                               rtol=1e-4, atol=1e-4)
    assert ns["clf"].score(ns["X"], ns["labels"]) > 0.9
    # CG over the empirical-NTK source solves the dense system of empirical_ntk's matrix
    K_emp = nk.empirical_ntk(ns["net"], ns["x"])
    A = K_emp + 1e-3 * torch.eye(K_emp.shape[0], dtype=K_emp.dtype)
    residual = (A @ ns["alpha_emp"] - ns["y"]).norm() / ns["y"].norm()
    assert float(residual) < 1e-5


def test_readme_commands_exist():
    text = README.read_text(encoding="utf-8")
    for script in re.findall(r"\./scripts/(\w+\.sh)", text):
        path = ROOT / "scripts" / script
        assert path.is_file() and os.access(path, os.X_OK), f"README names {path}, not executable"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "scripts/test.sh" in ci, "CI must run the README's test command"
