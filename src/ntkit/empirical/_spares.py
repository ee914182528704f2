"""Memory of freed feature blocks, handed to the next block instead of fresh memory.

A feature block of the structured path holds hundreds of MB (layer inputs and cotangents of
every example of the block). Memory that large comes from ``mmap`` and is page-faulted in
at first touch, so filling a fresh block from its micro-batches ran at 0.9 GB/s where a
reused one ran at 3.4 GB/s (one core of the 2-core AMD EPYC, benchmarks/RESULTS.md); a
kernel computed in output groups makes one block per group. :class:`Spares` keeps the
buffers of blocks that are no longer referenced and gives them to the next block.
"""

from __future__ import annotations

import weakref

import torch


class Block(list):
    """The terms of one feature block: a list that can be weakly referenced (its buffers go
    back to their :class:`Spares` when it is freed)."""


class Spares:
    """Flat buffers of freed feature blocks, reused by the next block of the same method.

    A block's buffers are reused only once the :class:`Block` they were given to is
    garbage collected; whoever holds a tensor of the block holds the block with it (the
    structured path never keeps a view of a block without the block).
    """

    def __init__(self) -> None:
        self._free: list[torch.Tensor] = []

    def buffers(self, requests: list[tuple[int, torch.Tensor]], block: Block) -> list[torch.Tensor]:
        """Flat tensors for ``block``, one per request ``(entries, like)`` with ``like``'s dtype
        and device: the smallest spare that fits each (largest request first), fresh memory
        for the rest. Spares that fit no request are released before any fresh memory is
        taken, so that spares never add to the memory of the block being made."""
        free = sorted(self._free, key=torch.Tensor.numel)
        self._free = []
        chosen: list[torch.Tensor | None] = [None] * len(requests)
        for i in sorted(range(len(requests)), key=lambda k: -requests[k][0]):
            size, like = requests[i]
            fit = next((k for k, t in enumerate(free) if t.numel() >= size and t.dtype == like.dtype
                        and t.device == like.device), None)
            if fit is not None:
                chosen[i] = free.pop(fit)
        free.clear()
        whole = [like.new_empty(size) if t is None else t for t, (size, like) in zip(chosen, requests)]
        weakref.finalize(block, self._give_back, whole)
        return [t[:size] for t, (size, _) in zip(whole, requests)]

    def _give_back(self, buffers: list[torch.Tensor]) -> None:
        self._free.extend(buffers)
