"""Empirical (finite-width) NTK of any ``torch.nn.Module``.

``empirical_ntk(model, x1, x2=None, output=..., method=...)`` with three methods, one file
each: Jacobian contraction (:mod:`.jacobian`), NTK-vector products (:mod:`.ntk_vp`) and
structured derivatives of affine layers (:mod:`.structured`); ``method="auto"`` picks by
:mod:`.cost_model`. :func:`plan_empirical_ntk` tells what ``auto`` would do.
"""

from .core import METHODS, OUTPUTS, Plan, empirical_ntk, plan_empirical_ntk

__all__ = ["METHODS", "OUTPUTS", "Plan", "empirical_ntk", "plan_empirical_ntk"]
