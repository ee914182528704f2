"""Which parameters a kernel counts, and which models have one: shared with :mod:`ntkit.linearize`.

* ``ParamSelector``: ``None`` (every parameter with ``requires_grad``), a name or module
  prefix, a list of names/prefixes/parameters, or a predicate ``(name, parameter) -> bool``;
* :func:`select_params` splits a model's parameters into ``(selected, fixed)``;
* :func:`check_modules` refuses modules whose forward is impure or random in training mode
  (BatchNorm with running statistics, Dropout), with a message that says what to do;
* :func:`check_finite_weights` refuses a model with a NaN/Inf parameter or buffer.

The public face of the empirical package's private :mod:`._params` (which also holds the
problem set-up of :func:`ntkit.empirical_ntk`).
"""

from ._params import ParamSelector, check_finite_weights, check_modules, select_params

__all__ = ["ParamSelector", "check_finite_weights", "check_modules", "select_params"]
