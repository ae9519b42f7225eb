"""Where fusedloss's kernels run and how often they launch: the engine's public surface for
tools and benchmarks (``fusedloss.bench`` reads nothing else of the engine).

>>> import torch, fusedloss
>>> fusedloss.runtime.backend(torch.device("cpu")) in ("compiled", "interpreter", "reference")
True
"""
from __future__ import annotations

import torch

from ._runtime import FORCE_COMPILED, INTERPRETED, LAUNCH_COUNTS, uses_triton

__all__ = ["INTERPRETED", "FORCE_COMPILED", "uses_triton", "backend", "launch_counts"]


def backend(device: torch.device) -> str:
    """How a loss runs on ``device``: ``"compiled"`` (Triton kernels compiled for the GPU; CPU
    tensors with ``FUSEDLOSS_FORCE_COMPILED=1``), ``"interpreter"`` (``TRITON_INTERPRET=1``) or
    ``"reference"`` (pure PyTorch, ``fusedloss.reference``)."""
    if not uses_triton(device):
        return "reference"
    return "interpreter" if INTERPRETED and device.type == "cpu" else "compiled"


def launch_counts() -> dict:
    """Kernel launches (and weight sums) by name since import: a snapshot, for deltas."""
    return dict(LAUNCH_COUNTS)
