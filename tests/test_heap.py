"""ntkit._heap: glibc keeps freed tile-sized blocks (no page fault per reuse); results unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from ntkit import _heap

GLIBC = hasattr(os, "confstr") and sys.platform.startswith("linux")


def _fresh(monkeypatch, value: str | None) -> bool:
    monkeypatch.setattr(_heap, "_state", {"depth": 0})
    if value is None:
        monkeypatch.delenv("NTKIT_MALLOPT", raising=False)
    else:
        monkeypatch.setenv("NTKIT_MALLOPT", value)
    return _heap.active()


def test_opt_out_nesting_and_exceptions(monkeypatch):
    assert _fresh(monkeypatch, "0") is False
    with _heap.tile_heap():
        assert _heap._state["depth"] == 1
    if GLIBC and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
        assert _fresh(monkeypatch, None) is True
    with pytest.raises(RuntimeError):  # an error inside still leaves the evaluation
        with _heap.tile_heap():
            with _heap.tile_heap():
                assert _heap._state["depth"] == 2
                raise RuntimeError
    assert _heap._state["depth"] == 0


_SCRIPT = textwrap.dedent("""
    import json, resource, torch
    import ntkit as nk
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, 40, generator=g, dtype=torch.float64)
    a = (torch.rand(40, 40, 40, generator=g) < 0.2).double()
    arch = nk.serial(nk.Aggregate(), nk.Dense(8, 2**0.5), nk.ReLU(), nk.Aggregate(), nk.Dense(8), nk.ReLU(),
                     nk.GlobalSumPool(), nk.Dense(1))
    k0 = arch.kernel(x, pattern1=a)
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    k1 = arch.kernel(x, pattern1=a)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    same = bool((k0.ntk == k1.ntk).all())
    print(json.dumps({"faults": faults, "ntk": k1.ntk.flatten().tolist(), "same": same}))
""")


def _run(env_value: str) -> dict:
    env = {**os.environ, "NTKIT_MALLOPT": env_value, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_tile_temporaries_are_not_page_faulted_again():
    on, off = _run("1"), _run("0")
    assert on["same"] and off["same"]
    assert on["ntk"] == off["ntk"]  # memory reuse only: bit-identical kernels
    # Without the thresholds every tile's temporaries are mmapped afresh; with them only the
    # heap grows to the working set once and is reused.
    assert on["faults"] * 3 < off["faults"], (on["faults"], off["faults"])
