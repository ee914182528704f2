"""The lab's networks for the Zhang et al. / Arora et al. experiments: ``fc`` and ``cnn``.

Each :class:`LabModel` pairs an infinite-width NTK with the finite network trained in
``random-labels`` and ``bound`` (``--arch``), both taking the lab's flat ``(n, d)`` rows:

- ``fc`` (default): the lecture's two-layer ReLU net ``h(x) = (1/√m) Σ a_i relu(b_iᵀx)``
  (:class:`ntkit.theory.TwoLayerNet`) and its NTK :func:`ntkit.theory.two_layer_ntk`. A fully
  connected net treats its inputs as an unordered list: a fixed permutation of the pixels
  permutes the rows of its first weight matrix, whose distribution is permutation
  invariant, so the kernel — and, in the lazy regime, the whole training run — is unchanged
  by "shuffled pixels" (Zhang et al. 2017 shuffle pixels to destroy the locality a CNN
  relies on).
- ``cnn``: ``Conv(C, 3×3, same) – ReLU – Conv(C, 3×3, same) – ReLU – Flatten – Dense(1)``
  (``W_std = √2`` in the convolutions, NTK parameterization, no biases; stride 2 in both
  convolutions when the images are at least 16 pixels on every side, e.g. MNIST's 28×28,
  to keep a full-batch step affordable on a CPU), described once with
  ntkit's layers: ``arch.kernel`` is its CNTK (Arora et al. 2019b; Novak et al. 2019) and
  ``arch.build`` the finite net with ``C`` channels. Its windows see neighbouring pixels, so
  shuffled pixels change the kernel. Needs image data (:attr:`LabData.image_shape`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ParameterError
from ..infinite import Conv, Dense, Flatten, ReLU, serial
from ..theory import TwoLayerNet, two_layer_ntk
from .dataset import LabData

ARCHS = ("fc", "cnn")
#: The dtype in which the CNN's finite nets compute.
CNN_DTYPE = torch.float32


class _FlatInput(torch.nn.Module):
    """Reshape flat rows to images before a convolutional net (computing in the net's
    dtype); outputs ``(n,)`` in the inputs' dtype."""

    def __init__(self, net: torch.nn.Module, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        super().__init__()
        self.net, self.shape, self.dtype = net, tuple(shape), dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x.reshape(x.shape[0], *self.shape).to(self.dtype))
        return out.reshape(-1).to(x.dtype)


@dataclass(frozen=True)
class LabModel:
    """A network family of the lab: its infinite-width NTK and its finite nets.

    Attributes:
        name: ``"fc"`` or ``"cnn"``.
        width: hidden units (``fc``) or channels (``cnn``) of the finite nets.
        image_shape: ``(C, H, W)`` / ``(C, L)`` for ``cnn``, ``None`` for ``fc``.
    """

    name: str
    width: int
    image_shape: tuple[int, ...] | None = None

    @property
    def description(self) -> str:
        if self.name == "fc":
            return f"the lecture's two-layer ReLU net of width {self.width}"
        k = "3×3" if self.image_shape is not None and len(self.image_shape) == 3 else "3"
        st = f", stride {self.stride}" if self.stride > 1 else ""
        return (f"a CNN Conv({self.width}, {k}{st})–ReLU–Conv({self.width}, {k}{st})–ReLU–Flatten–Dense(1) "
                "with its CNTK")

    @property
    def lr_scale(self) -> float:
        """Factor on ``η = n/λ_max(H)`` (:mod:`ntkit.lab.fits`): 1 for ``fc``; ½ for the
        CNN, whose 16-channel nets are far enough from their infinite-width kernel that
        the full step made some runs diverge and their ReLUs die (measured on digits). The
        CNN's step is further capped by its own curvature
        (:func:`ntkit.lab.fits.learning_rate_details`)."""
        return 1.0 if self.name == "fc" else 0.5

    @property
    def stride(self) -> int:
        return 2 if self.image_shape is not None and min(self.image_shape[1:]) >= 16 else 1

    def _arch(self):
        w, st = math.sqrt(2.0), self.stride
        return serial(Conv(self.width, 3, stride=st, padding="same", W_std=w), ReLU(),
                      Conv(self.width, 3, stride=st, padding="same", W_std=w), ReLU(), Flatten(), Dense(1))

    def kernel(self, x: torch.Tensor) -> torch.Tensor:
        """Infinite-width NTK ``(n, n)`` (float64) of flat rows ``x`` ``(n, d)``."""
        if self.name == "fc":
            return two_layer_ntk(x)
        images = x.reshape(x.shape[0], *self.image_shape)
        return self._arch().kernel(images, get="ntk")

    def kernel_cached(self, x: torch.Tensor, cache: dict) -> torch.Tensor:
        """:meth:`kernel` of ``x``, remembered in ``cache`` (keyed by the tensor's identity)."""
        key = ("model-kernel", self.name, id(x))
        if key not in cache:
            cache[key] = self.kernel(x)
        return cache[key]

    def net(self, d: int, seed: int, device: torch.device) -> torch.nn.Module:
        """A finite net mapping ``(n, d)`` float64 rows to ``(n,)`` float64 outputs.

        The CNN computes in float32 (:data:`CNN_DTYPE`): CPU convolutions in float64 take
        the slow reference path, about twice the time (measured on 8×8 digits), and the
        lab's loss threshold (0.01) is far above float32 rounding.
        """
        if self.name == "fc":
            return TwoLayerNet(d, self.width, activation=torch.relu, seed=seed).to(device)
        net = self._arch().build(self.image_shape, seed=seed).to(device=device, dtype=CNN_DTYPE)
        return _FlatInput(net, self.image_shape, CNN_DTYPE)


def lab_model(arch: str, data: LabData, width: int, channels: int) -> LabModel:
    """The :class:`LabModel` for ``--arch arch`` on ``data``.

    Raises:
        ParameterError: an unknown name, or ``cnn`` on tabular features.
    """
    if arch not in ARCHS:
        raise ParameterError(f"unknown architecture {arch!r}; use fc or cnn")
    if arch == "fc":
        return LabModel("fc", int(width))
    if not data.is_image:
        raise ParameterError(
            f"--arch cnn needs images, but {data.name} holds tabular features; give --image-shape "
            "H,W (or C,H,W) if its rows are flattened images, or use --arch fc"
        )
    return LabModel("cnn", int(channels), tuple(data.image_shape))
