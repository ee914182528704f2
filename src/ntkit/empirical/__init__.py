"""Empirical (finite-width) NTK of any ``torch.nn.Module``.

``empirical_ntk(model, x1, x2=None, output=..., method=...)`` with three methods, one file
each: Jacobian contraction (:mod:`.jacobian`), NTK-vector products (:mod:`.ntk_vp`) and
structured derivatives of affine layers (:mod:`.structured`); ``method="auto"`` picks by
:mod:`.cost_model` and tries its choice on two examples first. :func:`plan_empirical_ntk`
tells what ``auto`` would do. Inputs and outputs of any layout: :mod:`.inputs`; RNNs and
attention: :mod:`.traceable`. :class:`EmpiricalNTKSource`: the empirical NTK of a fixed
model as a kernel source, for a matrix-free :class:`~ntkit.linalg.KernelOperator`.
"""

from .core import METHODS, OUTPUTS, Plan, empirical_ntk, plan_empirical_ntk
from .inputs import Examples, all_outputs
from .kernels import empirical_kernel, empirical_nngp, ntk_vp
from .source import EmpiricalNTKSource

__all__ = ["METHODS", "OUTPUTS", "EmpiricalNTKSource", "Examples", "Plan", "all_outputs",
           "empirical_kernel", "empirical_nngp", "empirical_ntk", "ntk_vp", "plan_empirical_ntk"]
